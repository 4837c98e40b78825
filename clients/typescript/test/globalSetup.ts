/**
 * Starts a real gatewayd (embedded PostgreSQL, the SPIn simulator, the daemon) for the tests:
 * `gatewayd demo --state-dir <tmp> --tcp 127.0.0.1:<free port>`, TLS with the demo's store CA and
 * a bearer token; waits for its ready line and for every terminal online; stops it with SIGTERM.
 *
 * The executable is $GATEWAYD_BIN, else the repository's .venv/bin/gatewayd. With
 * $GATEWAYD_DEMO_JSON the tests use a demo already running instead (its demo.json).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { TestProject } from "vitest/node";
import { GatewayClient } from "../src/index.js";
import { type DemoInfo, fetchTrustingCa } from "../examples/node-tls.js";

declare module "vitest" {
  export interface ProvidedContext {
    demo: DemoInfo & { tcp_url: string; token: string; ca_file: string; tpns: Record<string, string> };
    /** The demo.json it was read from. */
    demoFile: string;
  }
}

const here = dirname(fileURLToPath(import.meta.url));

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? ok(address.port) : fail(new Error("no port"))));
    });
  });
}

function gatewaydBin(): string {
  if (process.env.GATEWAYD_BIN) return process.env.GATEWAYD_BIN;
  const venv = resolve(here, "..", "..", "..", ".venv", "bin", "gatewayd");
  if (existsSync(venv)) return venv;
  throw new Error("no gatewayd: set GATEWAYD_BIN, or run ./dev once at the repository's root (it makes .venv)");
}

async function waitUntil<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>, output: () => string): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`gatewayd demo: ${what} not within ${timeoutMs} ms (${String(last ?? "")})\n${output()}`);
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  let child: ChildProcess | null = null;
  let stateDir: string | null = null;
  let output = "";
  let file = process.env.GATEWAYD_DEMO_JSON;
  if (!file) {
    stateDir = mkdtempSync(join(tmpdir(), "gatewayd-ts-"));
    file = join(stateDir, "demo.json");
    const port = await freePort();
    child = spawn(gatewaydBin(), ["demo", "--state-dir", stateDir, "--tcp", `127.0.0.1:${port}`], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000);
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    let exited: string | null = null;
    child.once("exit", (code, signal) => (exited = `exited (${code ?? signal})`));
    await waitUntil("ready", 120_000, async () => {
      if (exited) throw new Error(exited);
      return output.includes("Press Ctrl-C to stop.") ? true : undefined;
    }, () => output);
  }
  const demo = JSON.parse(readFileSync(file, "utf8"));
  if (!demo.tcp_url || !demo.tpns) throw new Error(`${file}: no tcp_url or tpns (a demo started with --tcp, of this version)`);
  const gw = new GatewayClient({ baseUrl: demo.tcp_url, token: demo.token, fetch: fetchTrustingCa(demo.ca_file) });
  await waitUntil("every terminal online", 60_000, async () => {
    const health = await gw.health();
    return health.terminals.online === health.terminals.total ? true : undefined;
  }, () => output);
  project.provide("demo", demo);
  project.provide("demoFile", file);

  return async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise<void>((ok) => child?.once("exit", () => ok()));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child?.kill("SIGKILL"), 30_000);
      await gone;
      clearTimeout(timer);
    }
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  };
}
