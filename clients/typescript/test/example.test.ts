/** examples/checkout.ts runs against the demo as the README says: `npx tsx examples/checkout.ts <demo.json>`. */
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { expect, inject, test } from "vitest";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("examples/checkout.ts: cash, card, split, a decline and a retry", async () => {
  const tsx = join(root, "node_modules", "tsx", "dist", "cli.mjs");
  const { stdout } = await promisify(execFile)(process.execPath, [tsx, "examples/checkout.ts", inject("demoFile")], {
    cwd: root,
    timeout: 60_000,
  });
  expect(stdout).toMatch(/cash: +order \d+ completed, change \$\d+\.\d\d/);
  expect(stdout).toMatch(/card: +order \d+ completed/);
  expect(stdout).toMatch(/split: order \d+ completed: cash \$10\.00 \+ card/);
  expect(stdout).toContain('decline: declined: "Declined: DO NOT HONOR"');
  expect(stdout).toMatch(/retry: order (\d+) completed after a lost answer; sent again: order \1, the same checkout: true/);
}, 60_000);
