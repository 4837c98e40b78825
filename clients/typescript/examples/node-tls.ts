/**
 * Node only (tests and examples, never the client's runtime path): a fetch that trusts the store
 * CA, and demo.json. On a tablet the operating system trusts the CA instead (docs/pos-integration.md).
 */
import { existsSync, readFileSync } from "node:fs";
import { resolve } from "node:path";
import { Agent, fetch as undiciFetch } from "undici";
import type { FetchLike } from "../src/index.js";

/** Node's fetch (undici) with a dispatcher whose TLS trusts `caFile` (the store CA's PEM, demo.json's `ca_file`). */
export function fetchTrustingCa(caFile: string): FetchLike {
  const dispatcher = new Agent({ connect: { ca: readFileSync(caFile, "utf8") } });
  return (url, init) => undiciFetch(url, { ...init, dispatcher }) as unknown as ReturnType<FetchLike>;
}

/** What `gatewayd demo --tcp HOST:PORT` writes to state/demo.json. */
export interface DemoInfo {
  socket: string;
  dsn: string;
  simulator_url: string;
  metrics_url: string;
  /** Each lane's simulated terminal (for /_sim/terminals/{tpn}/offline|online). */
  tpns?: Record<string, string>;
  tcp_url?: string;
  token?: string;
  ca_file?: string;
}

/** demo.json from the argument, else $GATEWAYD_DEMO_JSON, else ./state/demo.json or the repository's. */
export function readDemo(path?: string): DemoInfo & { tcp_url: string; token: string; ca_file: string } {
  const candidates = [path, process.env.GATEWAYD_DEMO_JSON, "state/demo.json", "../../state/demo.json"];
  const file = candidates.find((p): p is string => !!p && existsSync(p));
  if (!file) throw new Error("no demo.json: start `gatewayd demo --tcp 127.0.0.1:8470` and pass its state/demo.json");
  const info = JSON.parse(readFileSync(file, "utf8")) as DemoInfo;
  if (!info.tcp_url || !info.token || !info.ca_file) {
    throw new Error(`${resolve(file)} has no tcp_url: start the demo with --tcp HOST:PORT`);
  }
  return info as DemoInfo & { tcp_url: string; token: string; ca_file: string };
}
