/** The tests' view of the demo that test/globalSetup.ts started: clients, the simulator's controls, a sale. */
import { expect, inject } from "vitest";
import {
  type CheckoutRequest,
  type EventsOptions,
  GatewayClient,
  type GatewayClientOptions,
  type LiveEvent,
  newIdempotencyKey,
} from "../src/index.js";
import { fetchTrustingCa } from "../examples/node-tls.js";

export const demo = inject("demo");
export const trusted = fetchTrustingCa(demo.ca_file);

export function client(options: Partial<GatewayClientOptions> = {}): GatewayClient {
  return new GatewayClient({ baseUrl: demo.tcp_url, token: demo.token, fetch: trusted, ...options });
}

/** POST to the simulator's controls, e.g. `/_sim/terminals/${tpn}/offline`. */
export async function sim(path: string): Promise<void> {
  const answer = await fetch(demo.simulator_url + path, { method: "POST" });
  expect(answer.status, `${path}: ${await answer.clone().text()}`).toBe(200);
}

export interface Transaction {
  tpn: string;
  reference_id: string;
  type: string;
  amount: number;
  status: string;
}

/** Every transaction the simulated terminals saw (the terminals' own ledger, not gatewayd's view). */
export async function ledger(): Promise<Transaction[]> {
  const answer = await fetch(`${demo.simulator_url}/_sim/ledger`);
  return ((await answer.json()) as { transactions: Transaction[] }).transactions;
}

let dollars = 10 + Math.floor(Math.random() * 400);

/** An amount no other test uses, ending in `cents` (the simulator answers by the cents: ..51 declined …). */
export function amount(cents: number): number {
  dollars += 1;
  return dollars * 100 + cents;
}

/** A sale of one line of `total` cents, with a new idempotency key. */
export function sale(total: number, tenders: CheckoutRequest["tenders"], sku = "MUG"): CheckoutRequest {
  return {
    idempotency_key: newIdempotencyKey("reg-ts"),
    register_id: "reg-ts",
    lines: [{ sku, quantity: 1, unit_price: total }],
    tenders,
  };
}

/** Reads a live event stream in the background, to wait for and look at what arrived. */
export class EventLog {
  readonly events: LiveEvent[] = [];
  readonly opened: Promise<void>;
  private readonly stop = new AbortController();
  private failure: unknown = null;
  private readonly running: Promise<void>;

  constructor(gw: GatewayClient, options: Omit<EventsOptions, "signal" | "onConnection"> = {}) {
    let open: () => void = () => undefined;
    this.opened = new Promise((ok) => (open = ok));
    this.running = (async () => {
      try {
        for await (const event of gw.events({
          ...options,
          signal: this.stop.signal,
          onConnection: (state) => state === "open" && open(),
        })) {
          this.events.push(event);
        }
      } catch (error) {
        this.failure = error;
      }
    })();
  }

  async waitFor(what: string, predicate: (e: LiveEvent) => boolean, timeoutMs = 30_000): Promise<LiveEvent> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(predicate);
      if (found) return found;
      if (this.failure) throw this.failure;
      if (Date.now() > end) throw new Error(`no ${what} within ${timeoutMs} ms; got ${JSON.stringify(this.events)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }
}

/** `<run>-<n>`: n. */
export function eventNumber(e: LiveEvent): number {
  return Number(e.eventId?.split("-").pop());
}
