import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One real daemon and simulator for the whole run (gatewayd demo --tcp, over TLS with a token).
    globalSetup: ["test/globalSetup.ts"],
    // The checklist shares that daemon: its files run one at a time, each test in turn.
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
  },
});
