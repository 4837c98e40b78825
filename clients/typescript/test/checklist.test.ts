/**
 * The deployment guide's testing checklist, through the client, against a real gatewayd and its
 * SPIn simulator over TLS with a bearer token (test/globalSetup.ts starts `gatewayd demo --tcp`).
 * Money is checked against the simulated terminals' own ledger.
 */
import { afterAll, describe, expect, test } from "vitest";
import {
  CardDeclined,
  type FetchLike,
  IdempotencyConflict,
  InsufficientInventory,
  TerminalOffline,
  Unauthorized,
  ValidationError,
  newIdempotencyKey,
} from "../src/index.js";
import { EventLog, amount, client, demo, eventNumber, ledger, sale, sim, trusted } from "./helpers.js";

const gw = client();
const logs: EventLog[] = [];
afterAll(async () => {
  await Promise.all(logs.map((log) => log.close()));
});

function open(...args: ConstructorParameters<typeof EventLog>): EventLog {
  const log = new EventLog(...args);
  logs.push(log);
  return log;
}

async function available(sku: string): Promise<number> {
  const catalog = await gw.catalog();
  return catalog.items.find((item) => item.sku === sku)?.available ?? NaN;
}

async function charges(referenceIds: (string | null | undefined)[]): Promise<number> {
  const refs = new Set(referenceIds.filter(Boolean));
  return (await ledger()).filter((t) => refs.has(t.reference_id) && t.type === "sale" && t.status === "approved").length;
}

describe("the daemon over TLS", () => {
  test("health, terminals and the catalog, with the token; without it Unauthorized", async () => {
    const health = await gw.health();
    expect(health).toMatchObject({ status: "ok", database: "up" });
    const terminals = await gw.terminals();
    expect(terminals.map((t) => t.id).sort()).toEqual(Object.keys(demo.tpns).sort());
    expect(terminals.every((t) => t.status === "online")).toBe(true);
    expect((await gw.catalog()).items.map((i) => i.sku)).toContain("MUG");
    await expect(client({ token: undefined }).health()).rejects.toBeInstanceOf(Unauthorized);
    await expect(client({ token: "not-the-token" }).terminals()).rejects.toMatchObject({ code: "unauthorized", status: 401 });
  });
});

describe("the guide's checklist", () => {
  test("cash payment works; inventory deducted", async () => {
    const before = await available("TEA-100G");
    const total = amount(0);
    const done = await gw.checkout(sale(total, [{ type: "cash", amount: total, tendered: total + 500 }], "TEA-100G"));
    expect(done).toMatchObject({ status: "completed", total, change: 500 });
    expect(await available("TEA-100G")).toBe(before - 1);
  });

  test("card payment works", async () => {
    const total = amount(10);
    const done = await gw.checkout(sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }]));
    expect(done.status).toBe("completed");
    const [card] = done.tenders;
    expect(card).toMatchObject({ type: "card", status: "approved", terminal_id: "lane-1", entry_method: "chip" });
    expect(card.auth_code).toBeTruthy();
    expect(card.last4).toMatch(/^\d{4}$/);
    expect(await charges([card.reference_id])).toBe(1);
    const receipt = await gw.receipt(done.id, { width: 40 });
    expect(receipt).toContain(card.last4 ?? "????");
    expect(receipt.split("\n").every((line) => line.length <= 40)).toBe(true);
  });

  test("split payment works", async () => {
    const total = amount(20);
    const done = await gw.checkout(
      sale(total, [
        { type: "cash", amount: 1000 },
        { type: "card", amount: total - 1000, terminal_id: "lane-2" },
      ]),
    );
    expect(done.status).toBe("completed");
    expect(done.tenders.map((t) => [t.type, t.status])).toEqual([
      ["cash", "approved"],
      ["card", "approved"],
    ]);
  });

  test("a card decline: CardDeclined with the reason and the checkout; the order rolled back", async () => {
    const before = await available("MUG");
    const total = amount(51); // ..51: declined
    const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }]);
    const error = await gw.checkout(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CardDeclined);
    const declined = error as CardDeclined;
    expect(declined).toMatchObject({ code: "card_declined", status: 402, retry: "new_key", reason: "declined", hostCode: "05", tenderIndex: 0 });
    expect(declined.cashierMessage).toContain("DO NOT HONOR");
    expect(declined.checkout).toMatchObject({ status: "payment_failed", idempotency_key: request.idempotency_key });
    expect(declined.checkout.tenders[0].failure?.reason).toBe("declined");
    expect(await available("MUG")).toBe(before); // the reservation released
    // The same request again is the same answer: no second attempt at the card.
    const again = await gw.checkout(request).catch((e: unknown) => e);
    expect(again).toBeInstanceOf(CardDeclined);
    expect((again as CardDeclined).checkout.id).toBe(declined.checkout.id);
    const refs = (await ledger()).filter((t) => t.amount === total);
    expect(refs.map((t) => t.status)).toEqual(["declined"]);
  });

  test("a lost answer (..52) is found by inquiry: completed, and its events say so in order", async () => {
    const log = open(gw, { types: ["checkout.progress", "checkout.finished"] });
    await log.opened;
    const total = amount(52);
    const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-2" }]);
    const done = await gw.checkout(request);
    expect(done.status).toBe("completed");
    expect(done.tenders[0].status).toBe("approved");
    expect(await charges([done.tenders[0].reference_id])).toBe(1);
    await log.waitFor("checkout.finished", (e) => e.type === "checkout.finished" && e.checkout_id === done.id);
    const phases = log.events.flatMap((e) => (e.type === "checkout.progress" && e.checkout_id === done.id ? [e.phase] : []));
    expect(phases).toEqual(["intent_recorded", "sent_to_terminal", "unknown", "inquiring", "approved"]);
  });

  test("a terminal offline: refused before charging (TerminalOffline, same key); back, the same key completes", async () => {
    const tpn = demo.tpns["lane-3"];
    const log = open(gw, { types: ["terminal.status"] });
    await log.opened;
    await sim(`/_sim/terminals/${tpn}/offline`);
    try {
      const offline = await log.waitFor("lane-3 offline", (e) => e.type === "terminal.status" && e.terminal_id === "lane-3" && e.status === "offline");
      expect((await gw.terminals()).find((t) => t.id === "lane-3")?.status).toBe("offline"); // red before the cashier picks it
      const total = amount(30);
      const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-3" }]);
      const quick = client({ retry: { attempts: 2, initialDelayMs: 100 } });
      const error = await quick.checkout(request).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(TerminalOffline);
      expect(error).toMatchObject({ code: "terminal_offline", status: 503, retry: "same_key", idempotencyKey: request.idempotency_key });
      expect((await ledger()).filter((t) => t.tpn === tpn && t.amount === total)).toEqual([]);

      // Back online: the client retries the same key by itself until the daemon sees the terminal again.
      await sim(`/_sim/terminals/${tpn}/online`);
      const patient = client({ retry: { attempts: 60, initialDelayMs: 250, maxDelayMs: 1_000 } });
      const done = await patient.checkout(request);
      expect(done).toMatchObject({ status: "completed", idempotency_key: request.idempotency_key });
      expect((await ledger()).filter((t) => t.tpn === tpn && t.amount === total).map((t) => t.status)).toEqual(["approved"]);
      const online = await log.waitFor("lane-3 online", (e) => e.type === "terminal.status" && e.terminal_id === "lane-3" && e.status === "online");
      expect(eventNumber(online)).toBeGreaterThan(eventNumber(offline));
    } finally {
      await sim(`/_sim/terminals/${tpn}/online`);
    }
  });

  test("retry works: the same key never charges twice (an answer lost on the way back, then a second tap)", async () => {
    let dropped = 0;
    const flaky: FetchLike = async (url, init) => {
      const answer = await trusted(url, init);
      if (init.method === "POST" && dropped++ === 0) throw new TypeError("fetch failed: connection reset");
      return answer;
    };
    const total = amount(40);
    const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }]);
    const first = await client({ fetch: flaky, retry: { initialDelayMs: 50 } }).checkout(request);
    expect(dropped).toBe(2); // the lost answer and the retry that answered
    const second = await gw.checkout(request);
    expect(second.id).toBe(first.id);
    expect(second.status).toBe("completed");
    expect(await charges([first.tenders[0].reference_id])).toBe(1);
    expect((await ledger()).filter((t) => t.amount === total)).toHaveLength(1);
  });

  test("insufficient inventory: the payment is not attempted", async () => {
    const total = 1_000 * 107; // more filters than the shelf holds, at a price no other test uses
    const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }], "FILTER-100");
    request.lines = [{ sku: "FILTER-100", quantity: 1_000, unit_price: 107 }];
    const error = await gw.checkout(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientInventory);
    expect(error).toMatchObject({ status: 422, retry: "no" });
    expect((error as InsufficientInventory).skus[0]).toMatchObject({ sku: "FILTER-100", requested: 1_000 });
    expect((await ledger()).filter((t) => t.amount === total)).toEqual([]);
  });

  test("a bad request names the field; a key reused for another sale is an IdempotencyConflict", async () => {
    const bad = sale(100, [{ type: "cash", amount: 100 }]);
    bad.lines[0].unit_price = -1;
    const error = await gw.checkout(bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toMatchObject({ field: "lines[0].unit_price", retry: "no" });

    const total = amount(70);
    const first = sale(total, [{ type: "cash", amount: total }]);
    await gw.checkout(first);
    const other = { ...sale(total + 1, [{ type: "cash", amount: total + 1 }]), idempotency_key: first.idempotency_key };
    await expect(gw.checkout(other)).rejects.toBeInstanceOf(IdempotencyConflict);
  });

  test("void: the charge voided, the order cancelled; its events end in voided", async () => {
    const total = amount(80);
    const done = await gw.checkout(sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }]));
    const log = open(gw, { checkout: done.id });
    await log.opened;
    const voided = await gw.void(done.id);
    expect(voided.status).toBe("voided");
    expect(voided.tenders[0].status).toBe("voided");
    await log.waitFor("checkout.finished voided", (e) => e.type === "checkout.finished" && e.status === "voided");
    const phases = log.events.flatMap((e) => (e.type === "checkout.progress" ? [e.phase] : []));
    expect(phases).toEqual(["voiding", "voided"]);
    expect((await ledger()).filter((t) => t.amount === total).map((t) => t.status)).toEqual(["voided"]);
    expect((await gw.get(done.id)).status).toBe("voided");
  });

  test("refund: part of a card sale back on the card, once for its key", async () => {
    const total = amount(90);
    const done = await gw.checkout(sale(total, [{ type: "card", amount: total, terminal_id: "lane-2" }]));
    const refund = { idempotency_key: newIdempotencyKey("reg-ts"), amount: 1000 };
    const refunded = await gw.refund(done.id, refund);
    expect(refunded).toMatchObject({ status: "partially_refunded", refunded_amount: 1000 });
    expect(refunded.refunds?.[0]).toMatchObject({ amount: 1000, status: "completed", type: "card" });
    const again = await gw.refund(done.id, refund); // a retry of the same refund: not refunded twice
    expect(again.refunded_amount).toBe(1000);
    const returns = (await ledger()).filter((t) => t.type === "return" && t.reference_id === refunded.refunds?.[0].reference_id);
    expect(returns.map((t) => [t.amount, t.status, t.tpn])).toEqual([[1000, "returned", demo.tpns["lane-2"]]]);
    expect((await gw.findByKey(done.idempotency_key)).refunded_amount).toBe(1000);
  });
});

describe("live events", () => {
  test("a checkout's events arrive in order, and a stream resumes after the last one seen", async () => {
    const log = open(gw, { types: ["checkout.progress", "checkout.finished"] });
    await log.opened;
    const total = amount(15);
    const request = sale(total, [{ type: "card", amount: total, terminal_id: "lane-1" }]);
    const done = await gw.checkout(request);
    await log.waitFor("checkout.finished", (e) => e.type === "checkout.finished" && e.checkout_id === done.id);
    const mine = log.events.filter((e) => e.type !== "stream.reset" && "checkout_id" in e && e.checkout_id === done.id);
    expect(mine.map((e) => (e.type === "checkout.progress" ? e.phase : `${e.type}:${"status" in e ? e.status : ""}`))).toEqual([
      "intent_recorded",
      "sent_to_terminal",
      "approved",
      "checkout.finished:completed",
    ]);
    const progress = mine.filter((e) => e.type === "checkout.progress");
    expect(progress.every((e) => e.type === "checkout.progress" && e.idempotency_key === request.idempotency_key)).toBe(true);
    const numbers = mine.map(eventNumber);
    expect([...numbers].sort((a, b) => a - b)).toEqual(numbers);

    // Resumed after the first: exactly the ones after it (Last-Event-ID).
    const resumed: string[] = [];
    for await (const e of gw.events({ checkout: done.id, lastEventId: mine[0].eventId ?? undefined })) {
      resumed.push(e.type === "checkout.progress" ? e.phase : e.type);
      if (e.type === "checkout.finished") break;
    }
    expect(resumed).toEqual(["sent_to_terminal", "approved", "checkout.finished"]);
  });

  test("a stream that cannot be resumed starts with stream.reset, handed to the caller", async () => {
    const stop = new AbortController();
    let first: unknown = null;
    for await (const e of gw.events({ lastEventId: "0000-1", types: ["terminal.status"], signal: stop.signal })) {
      first = e;
      break;
    }
    expect(first).toMatchObject({ type: "stream.reset", reason: "restarted", last_event_id: "0000-1" });
  });

  test("a bad filter is a ValidationError, a wrong token Unauthorized: no reconnecting", async () => {
    const iterate = async (c: ReturnType<typeof client>, checkout?: string) => {
      for await (const _ of c.events({ checkout })) break;
    };
    await expect(iterate(gw, "not-a-uuid")).rejects.toBeInstanceOf(ValidationError);
    await expect(iterate(client({ token: "wrong" }))).rejects.toBeInstanceOf(Unauthorized);
  });
});
