/** The client's own rules with a scripted fetch: retries, keys, polling, deadlines, typed errors. */
import { describe, expect, test, vi } from "vitest";
import {
  CardDeclined,
  type Checkout,
  GatewayClient,
  IdempotencyConflict,
  InsufficientInventory,
  NetworkError,
  OutcomeUnknown,
  type ResponseLike,
  TerminalBusy,
  TerminalOffline,
  Unauthorized,
  UntrackedSku,
  ValidationError,
  newIdempotencyKey,
} from "../src/index.js";

interface Call {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: string;
}

type Step = ResponseLike | Error | ((call: Call) => ResponseLike | Error);

function answer(status: number, body: unknown): ResponseLike {
  return { status, text: async () => JSON.stringify(body) };
}

function errorBody(code: string, retry: string, details: Record<string, unknown> = {}, extra: object = {}) {
  return { ...extra, error: { code, message: code.replace(/_/g, " "), retry, details } };
}

function checkout(status: Checkout["status"], extra: Partial<Checkout> = {}): Checkout {
  return {
    id: "c-1",
    order_id: "c-1",
    order_number: "000001",
    idempotency_key: "reg1-key",
    status,
    payment_status: status,
    currency: "USD",
    subtotal: 1000,
    tax: 0,
    discount: 0,
    total: 1000,
    change: 0,
    tenders: [{ type: "card", amount: 1000, status: status === "completed" ? "approved" : "processing", terminal_id: "lane-1" }],
    created_at: "2026-01-01T00:00:00Z",
    ...extra,
  };
}

/** A fetch that answers each call with the next step (the last one repeats), and records the calls. */
function scripted(...steps: Step[]) {
  const calls: Call[] = [];
  const fetch = async (url: string, init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal }) => {
    const call = { url, method: init.method, headers: init.headers, body: init.body };
    calls.push(call);
    let step = steps[Math.min(calls.length - 1, steps.length - 1)];
    if (typeof step === "function") step = step(call);
    if (step instanceof Error) throw step;
    return step;
  };
  return { calls, fetch };
}

const request = { idempotency_key: "reg1-key", lines: [{ sku: "MUG", quantity: 1, unit_price: 1000 }], tenders: [{ type: "card" as const, amount: 1000, terminal_id: "lane-1" }] };

function make(fetch: ReturnType<typeof scripted>["fetch"], extra: Partial<ConstructorParameters<typeof GatewayClient>[0]> = {}) {
  return new GatewayClient({
    baseUrl: "https://store.example:8470/",
    token: "T0KEN",
    fetch,
    retry: { attempts: 4, initialDelayMs: 1, maxDelayMs: 2 },
    poll: { initialDelayMs: 1, maxDelayMs: 5 },
    ...extra,
  });
}

describe("checkout", () => {
  test("a completed checkout, with the token, JSON and the key", async () => {
    const { calls, fetch } = scripted(answer(200, checkout("completed")));
    expect((await make(fetch).checkout(request)).status).toBe("completed");
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ url: "https://store.example:8470/v1/checkouts", method: "POST" });
    expect(calls[0].headers).toMatchObject({ Authorization: "Bearer T0KEN", "Content-Type": "application/json" });
    expect(JSON.parse(calls[0].body ?? "")).toEqual(request);
  });

  test("503 same_key answers and network failures are retried with the same request and key", async () => {
    const { calls, fetch } = scripted(
      answer(503, errorBody("terminal_offline", "same_key")),
      new TypeError("fetch failed"),
      answer(503, errorBody("database_unavailable", "same_key")),
      answer(200, checkout("completed")),
    );
    expect((await make(fetch).checkout(request)).status).toBe("completed");
    expect(calls).toHaveLength(4);
    expect(new Set(calls.map((c) => c.body)).size).toBe(1);
  });

  test("a 503 without the daemon's body (a proxy's) is retried too", async () => {
    const { calls, fetch } = scripted({ status: 503, text: async () => "<html>bad gateway</html>" }, answer(200, checkout("completed")));
    expect((await make(fetch).checkout(request)).status).toBe("completed");
    expect(calls).toHaveLength(2);
  });

  test("retries run out: the typed error, retry same_key, with the checkout and the key", async () => {
    const failed = checkout("payment_failed", { failure: { code: "terminal_offline", reason: "terminal_offline" } });
    const { calls, fetch } = scripted(answer(503, errorBody("terminal_offline", "same_key", {}, failed)));
    const error = await make(fetch).checkout(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(TerminalOffline);
    expect(error).toMatchObject({ code: "terminal_offline", status: 503, retry: "same_key", idempotencyKey: "reg1-key" });
    expect((error as TerminalOffline).checkout?.status).toBe("payment_failed");
    expect(calls).toHaveLength(4);
    const busy = scripted(answer(503, errorBody("terminal_busy", "same_key")));
    await expect(make(busy.fetch, { retry: { attempts: 1 } }).checkout(request)).rejects.toBeInstanceOf(TerminalBusy);
    expect(busy.calls).toHaveLength(1);
  });

  test("new_key and no answers are not retried, each its own class", async () => {
    const declined = checkout("payment_failed", {
      failure: { code: "card_declined", message: "Declined: DO NOT HONOR", reason: "declined" },
      tenders: [{ type: "card", amount: 1000, status: "declined", failure: { reason: "declined", message: "Declined: DO NOT HONOR", host_code: "05" } }],
    });
    const cases: [number, unknown, new (...a: never[]) => Error, object][] = [
      [402, errorBody("card_declined", "new_key", { reason: "declined" }, declined), CardDeclined, { reason: "declined", hostCode: "05", cashierMessage: "Declined: DO NOT HONOR", tenderIndex: 0 }],
      [409, errorBody("idempotency_conflict", "new_key"), IdempotencyConflict, {}],
      [400, errorBody("validation_error", "no", { field: "lines[0].quantity" }), ValidationError, { field: "lines[0].quantity" }],
      [422, errorBody("insufficient_inventory", "no", { skus: [{ sku: "MUG", available: 1, requested: 2 }] }), InsufficientInventory, { skus: [{ sku: "MUG", available: 1, requested: 2 }] }],
      [422, errorBody("untracked_sku", "no", { skus: ["GIFT"] }), UntrackedSku, { skus: ["GIFT"] }],
      [401, errorBody("unauthorized", "no"), Unauthorized, {}],
    ];
    for (const [status, body, Class, fields] of cases) {
      const { calls, fetch } = scripted(answer(status, body));
      const error = await make(fetch).checkout(request).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(Class);
      expect(error).toMatchObject({ status, ...fields });
      expect((error as Error).name).toBe(Class.name);
      expect(calls).toHaveLength(1);
    }
  });

  test("outcome_pending: polls GET /v1/checkouts/{id} until final", async () => {
    const pending = checkout("payment_processing");
    const { calls, fetch } = scripted(
      answer(504, errorBody("outcome_pending", "same_key", {}, pending)),
      answer(200, pending),
      new TypeError("fetch failed"), // a network failure while polling: poll on
      answer(200, checkout("completed")),
    );
    expect((await make(fetch).checkout(request)).status).toBe("completed");
    expect(calls.map((c) => `${c.method} ${new URL(c.url).pathname}`)).toEqual([
      "POST /v1/checkouts",
      "GET /v1/checkouts/c-1",
      "GET /v1/checkouts/c-1",
      "GET /v1/checkouts/c-1",
    ]);
  });

  test("outcome_pending without a checkout: polls it by its key", async () => {
    const { calls, fetch } = scripted(answer(504, errorBody("outcome_pending", "same_key")), answer(404, errorBody("not_found", "no")), answer(200, checkout("completed")));
    expect((await make(fetch).checkout(request)).status).toBe("completed");
    expect(calls[1].url).toBe("https://store.example:8470/v1/checkouts?idempotency_key=reg1-key");
  });

  test("outcome_pending that ends declined: CardDeclined with the final checkout", async () => {
    const final = checkout("payment_failed", { failure: { code: "card_declined", message: "Declined", reason: "declined" } });
    const { fetch } = scripted(answer(504, errorBody("outcome_pending", "same_key", {}, checkout("payment_processing"))), answer(200, final));
    const error = await make(fetch).checkout(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CardDeclined);
    expect(error).toMatchObject({ reason: "declined", retry: "new_key", checkout: { status: "payment_failed" } });
  });

  test("still pending at the deadline: OutcomeUnknown with the checkout as it stands, never failed", async () => {
    const pending = checkout("payment_processing");
    const { fetch } = scripted(answer(504, errorBody("outcome_pending", "same_key", {}, pending)), answer(200, pending));
    const error = await make(fetch).checkout(request, { deadlineMs: 50 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutcomeUnknown);
    expect(error).toMatchObject({ why: "deadline", code: "outcome_unknown", retry: "same_key", idempotencyKey: "reg1-key" });
    expect((error as OutcomeUnknown).checkout?.status).toBe("payment_processing");
  });

  test("no answer at all: OutcomeUnknown (it may have gone through), not a failure", async () => {
    const { calls, fetch } = scripted(new TypeError("fetch failed"));
    const error = await make(fetch).checkout(request).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutcomeUnknown);
    expect(error).toMatchObject({ why: "network", idempotencyKey: "reg1-key" });
    expect(calls).toHaveLength(4);
  });

  test("a request that hangs is given up after requestTimeoutMs", async () => {
    const hang = (_: string, init: { signal?: AbortSignal }) =>
      new Promise<ResponseLike>((_ok, fail) => init.signal?.addEventListener("abort", () => fail(new Error("aborted"))));
    const gw = new GatewayClient({ baseUrl: "https://x", fetch: hang, requestTimeoutMs: 20, retry: { attempts: 1 } });
    await expect(gw.health()).rejects.toBeInstanceOf(NetworkError);
  });

  test("the caller's signal stops the wait: OutcomeUnknown aborted once it was sent", async () => {
    const pending = checkout("payment_processing");
    const stop = new AbortController();
    const { fetch } = scripted(answer(504, errorBody("outcome_pending", "same_key", {}, pending)), () => {
      stop.abort();
      return answer(200, pending);
    });
    const error = await make(fetch).checkout(request, { signal: stop.signal }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OutcomeUnknown);
    expect(error).toMatchObject({ why: "aborted" });
    const before = new AbortController();
    before.abort();
    const untouched = scripted(answer(200, checkout("completed")));
    await expect(make(untouched.fetch).checkout(request, { signal: before.signal })).rejects.not.toBeInstanceOf(OutcomeUnknown);
    expect(untouched.calls).toHaveLength(0);
  });

  test("no key: refused before anything is sent", async () => {
    const { calls, fetch } = scripted(answer(200, checkout("completed")));
    const error = await make(fetch).checkout({ ...request, idempotency_key: "" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ValidationError);
    expect(error).toMatchObject({ field: "idempotency_key" });
    expect(calls).toHaveLength(0);
  });
});

describe("void, refund, reads", () => {
  test("a void answered outcome_pending is asked again until it is final", async () => {
    const { calls, fetch } = scripted(answer(504, errorBody("outcome_pending", "same_key", {}, checkout("completed"))), answer(200, checkout("voided")));
    expect((await make(fetch).void("c-1")).status).toBe("voided");
    expect(calls.map((c) => `${c.method} ${new URL(c.url).pathname}`)).toEqual(["POST /v1/checkouts/c-1/void", "POST /v1/checkouts/c-1/void"]);
  });

  test("a refund sends its own key every time", async () => {
    const { calls, fetch } = scripted(new TypeError("fetch failed"), answer(200, checkout("partially_refunded")));
    const done = await make(fetch).refund("c-1", { idempotency_key: "r-1", amount: 100 });
    expect(done.status).toBe("partially_refunded");
    expect(calls.map((c) => JSON.parse(c.body ?? "{}").idempotency_key)).toEqual(["r-1", "r-1"]);
    expect(() => make(fetch).refund("c-1", { idempotency_key: "", amount: 100 })).toThrow(ValidationError);
  });

  test("reads: terminals unwrapped, ids escaped, network failures are NetworkError", async () => {
    const { calls, fetch } = scripted(answer(200, { terminals: [{ id: "lane 1", status: "online" }] }), answer(200, { id: "lane 1" }));
    const gw = make(fetch);
    expect((await gw.terminals()).map((t) => t.id)).toEqual(["lane 1"]);
    await gw.terminal("lane 1");
    expect(calls[1].url).toBe("https://store.example:8470/v1/terminals/lane%201");
    const down = scripted(new TypeError("fetch failed"));
    await expect(make(down.fetch).health()).rejects.toBeInstanceOf(NetworkError);
  });
});

describe("newIdempotencyKey", () => {
  test("printable, unique, naming the register", () => {
    const keys = new Set(Array.from({ length: 2000 }, () => newIdempotencyKey("reg 1/front")));
    expect(keys.size).toBe(2000);
    for (const key of keys) {
      expect(key).toMatch(/^reg_1_front-[0-9a-z]+-[0-9a-f]{24}$/);
      expect(key.length).toBeLessThanOrEqual(100);
    }
  });

  test("without crypto.getRandomValues (React Native without its polyfill) it still makes unique keys", () => {
    vi.stubGlobal("crypto", undefined);
    try {
      const keys = new Set(Array.from({ length: 500 }, () => newIdempotencyKey("reg1")));
      expect(keys.size).toBe(500);
    } finally {
      vi.unstubAllGlobals();
    }
  });
});
