/**
 * `GatewayClient`: the POS side of gatewayd's local API, for React Native and Node alike.
 *
 * It makes the right thing the easy thing: one idempotency key per sale (`newIdempotencyKey`),
 * the same key on every retry (the client retries network failures and `same_key` answers on its
 * own), `outcome_pending` waited out by polling until the checkout is final (or the deadline
 * passes: then `OutcomeUnknown`, never "failed"), and one typed error per thing the cashier must
 * do something about. Nothing here needs Node: `fetch` is the runtime's (or the one you pass).
 */
import {
  GatewayError,
  NetworkError,
  OutcomeUnknown,
  ValidationError,
  errorFromAnswer,
  errorFromCheckout,
  isCheckout,
} from "./errors.js";
import { type FetchLike, abortError, defaultFetch, linkedSignal, sleep } from "./fetch.js";
import { type SseTransport, SseParser, fetchTransport } from "./sse.js";
import type {
  Catalog,
  Checkout,
  CheckoutRequest,
  EventType,
  Health,
  LiveEvent,
  RefundRequest,
  StreamEvent,
  Terminal,
} from "./types.js";

/** How the client retries a request on its own: network failures and answers whose `retry` is `same_key`. */
export interface RetryPolicy {
  /** Tries of one request, the first included (default 4). */
  attempts?: number;
  /** The first wait between tries (default 500 ms); it doubles, with jitter, up to `maxDelayMs`. */
  initialDelayMs?: number;
  /** The longest wait between tries (default 4,000 ms). */
  maxDelayMs?: number;
}

/** How an `outcome_pending` checkout (or void, or refund) is polled until it is final. */
export interface PollPolicy {
  /** The first wait (default 500 ms); it grows by half each time, up to `maxDelayMs`. */
  initialDelayMs?: number;
  /** The longest wait between polls (default 5,000 ms). */
  maxDelayMs?: number;
}

export interface GatewayClientOptions {
  /** The daemon's TCP listener, e.g. `https://192.168.1.20:8470` (demo.json's `tcp_url`). */
  baseUrl: string;
  /** The store's bearer token (`[api] tcp_token`; demo.json's `token`). */
  token?: string;
  /** The fetch to use (default: the global one). Node tests pass one that trusts the store CA. */
  fetch?: FetchLike;
  /** How `events()` opens its stream (default: over `fetch`; React Native: `xhrTransport()`). */
  sseTransport?: SseTransport;
  /** One request's longest wait for its answer (default 100,000 ms: a checkout blocks up to the daemon's `checkout_wait_s`, 90 s by default). */
  requestTimeoutMs?: number;
  /** The longest a `checkout`, `void` or `refund` call takes in all, retries and polling included (default 180,000 ms). */
  deadlineMs?: number;
  retry?: RetryPolicy;
  poll?: PollPolicy;
  /** More headers for every request (e.g. an app version for the daemon's logs). */
  headers?: Record<string, string>;
}

export interface CallOptions {
  /** Stops waiting (the request is abandoned; a checkout already sent goes on at the daemon). */
  signal?: AbortSignal;
  /** This call's deadline instead of the client's `deadlineMs`. */
  deadlineMs?: number;
}

export interface EventsOptions {
  /** Only these types (default all three); `stream.reset` is always sent. */
  types?: EventType[];
  /** Only this checkout's events. */
  checkout?: string;
  /** Ends the iteration (as `break` in `for await` does). */
  signal?: AbortSignal;
  /** Resume after this event id (the `eventId` of the last event handled). */
  lastEventId?: string;
  /** No byte (not even a heartbeat, every 15 s) for this long means a dead connection: reconnect (default 45,000 ms). */
  idleTimeoutMs?: number;
  /** The longest wait before reconnecting after failures (default 15,000 ms). */
  maxReconnectDelayMs?: number;
  /** Told when the stream is open and when it dropped (to grey out a terminal indicator). */
  onConnection?: (state: "open" | "closed", error?: unknown) => void;
}

export interface ReceiptOptions extends Omit<CallOptions, "deadlineMs"> {
  width?: 40 | 48;
  copy?: "customer" | "merchant";
  html?: boolean;
}

interface Answer {
  status: number;
  body: unknown;
}

interface CallSpec {
  method: "GET" | "POST";
  path: string;
  body?: unknown;
  signal?: AbortSignal;
  deadline: number;
  /** The request changes something (a void, a refund): an answer lost is an outcome unknown. */
  changes: boolean;
  /** Send it again while it answers `outcome_pending` (a void, a refund: the retry answers the outcome). */
  resendWhilePending?: boolean;
  key?: string;
  accept?: string;
}

/** Checkout statuses after which nothing changes by itself. */
export const FINAL_STATUSES: ReadonlySet<Checkout["status"]> = new Set([
  "completed",
  "payment_failed",
  "cancelled",
  "voided",
  "refunded",
  "partially_refunded",
]);

export class GatewayClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;
  private readonly fetchFn: FetchLike;
  private readonly sseTransport: SseTransport;
  private readonly requestTimeoutMs: number;
  private readonly deadlineMs: number;
  private readonly retry: Required<RetryPolicy>;
  private readonly poll: Required<PollPolicy>;
  private readonly extraHeaders: Record<string, string>;

  constructor(options: GatewayClientOptions) {
    if (!options || !options.baseUrl) throw new TypeError("GatewayClient: baseUrl is required");
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token;
    this.fetchFn = options.fetch ?? defaultFetch();
    this.sseTransport = options.sseTransport ?? fetchTransport(this.fetchFn);
    this.requestTimeoutMs = options.requestTimeoutMs ?? 100_000;
    this.deadlineMs = options.deadlineMs ?? 180_000;
    this.retry = { attempts: 4, initialDelayMs: 500, maxDelayMs: 4_000, ...options.retry };
    this.poll = { initialDelayMs: 500, maxDelayMs: 5_000, ...options.poll };
    this.extraHeaders = { ...options.headers };
  }

  // ------------------------------------------------------------------ checkouts

  /**
   * Takes payment for an order: resolves to the completed checkout, or throws a typed error
   * (`CardDeclined`, `TerminalOffline`, `TerminalBusy`, `InsufficientInventory`,
   * `IdempotencyConflict`, `ValidationError`, `Unauthorized`, `OutcomeUnknown` …).
   *
   * Network failures and `same_key` answers (503 terminal_offline/busy, database_unavailable,
   * shutting_down; 500) are retried with the same key (`retry` policy); an `outcome_pending`
   * checkout is polled until it is final; past the deadline it throws `OutcomeUnknown` with the
   * checkout as it stands. Calling it again with the same request is always safe.
   */
  async checkout(request: CheckoutRequest, options: CallOptions = {}): Promise<Checkout> {
    const key = request?.idempotency_key;
    if (typeof key !== "string" || key.length === 0) {
      throw new ValidationError({
        code: "validation_error",
        message: "idempotency_key: one key per sale is required (newIdempotencyKey(registerId))",
        retry: "no",
        details: { field: "idempotency_key" },
      });
    }
    const deadline = Date.now() + (options.deadlineMs ?? this.deadlineMs);
    let pending: GatewayError;
    try {
      return await this.call<Checkout>({
        method: "POST",
        path: "/v1/checkouts",
        body: request,
        signal: options.signal,
        deadline,
        changes: true,
        key,
      });
    } catch (error) {
      if (!(error instanceof GatewayError) || error.code !== "outcome_pending") throw error;
      pending = error;
    }
    const final = await this.waitForOutcome(pending.checkout, key, deadline, options.signal);
    if (final.status === "completed") return final;
    throw errorFromCheckout(final);
  }

  /** A checkout by its id, in whatever state it is. */
  get(id: string, options: CallOptions = {}): Promise<Checkout> {
    return this.call<Checkout>({ method: "GET", path: `/v1/checkouts/${encodeURIComponent(id)}`, ...this.readSpec(options) });
  }

  /** A checkout by its idempotency key (after an app restart mid-sale: where did it get to?). */
  findByKey(idempotencyKey: string, options: CallOptions = {}): Promise<Checkout> {
    const path = `/v1/checkouts?idempotency_key=${encodeURIComponent(idempotencyKey)}`;
    return this.call<Checkout>({ method: "GET", path, ...this.readSpec(options) });
  }

  /**
   * Voids every card tender and cancels the order (before settlement): the voided checkout.
   * `AlreadySettled` (with `refundAmount`) when a charge's batch closed: refund it instead.
   */
  void(id: string, options: CallOptions = {}): Promise<Checkout> {
    return this.call<Checkout>({
      method: "POST",
      path: `/v1/checkouts/${encodeURIComponent(id)}/void`,
      signal: options.signal,
      deadline: Date.now() + (options.deadlineMs ?? this.deadlineMs),
      changes: true,
      resendWhilePending: true,
    });
  }

  /**
   * Refunds through the terminal's Return (one key per refund, like a sale): the checkout with
   * the refund completed. `RefundDeclined` when nothing was refunded.
   */
  refund(id: string, request: RefundRequest, options: CallOptions = {}): Promise<Checkout> {
    if (typeof request?.idempotency_key !== "string" || request.idempotency_key.length === 0) {
      throw new ValidationError({
        code: "validation_error",
        message: "idempotency_key: one key per refund is required",
        retry: "no",
        details: { field: "idempotency_key" },
      });
    }
    return this.call<Checkout>({
      method: "POST",
      path: `/v1/checkouts/${encodeURIComponent(id)}/refunds`,
      body: request,
      signal: options.signal,
      deadline: Date.now() + (options.deadlineMs ?? this.deadlineMs),
      changes: true,
      resendWhilePending: true,
      key: request.idempotency_key,
    });
  }

  /** The checkout's receipt: plain text for a thermal printer (`width` 40 or 48), or HTML. */
  receipt(id: string, options: ReceiptOptions = {}): Promise<string> {
    const suffix = queryString({ width: options.width, copy: options.copy });
    return this.call<string>({
      method: "GET",
      path: `/v1/checkouts/${encodeURIComponent(id)}/receipt${suffix}`,
      ...this.readSpec(options),
      accept: options.html ? "text/html" : "text/plain",
    });
  }

  // ------------------------------------------------------------------ the store

  /** Every terminal with its status (`online`, `offline`, `busy`, `unknown`): the indicator before the cashier picks one. */
  async terminals(options: CallOptions = {}): Promise<Terminal[]> {
    const list = await this.call<{ terminals: Terminal[] }>({ method: "GET", path: "/v1/terminals", ...this.readSpec(options) });
    return list.terminals;
  }

  terminal(id: string, options: CallOptions = {}): Promise<Terminal> {
    return this.call<Terminal>({ method: "GET", path: `/v1/terminals/${encodeURIComponent(id)}`, ...this.readSpec(options) });
  }

  /** The daemon, its database and its terminals: `status` `ok` or `degraded`. */
  health(options: CallOptions = {}): Promise<Health> {
    return this.call<Health>({ method: "GET", path: "/v1/health", ...this.readSpec(options) });
  }

  /** What the POS may sell, with what is available now. */
  catalog(options: CallOptions = {}): Promise<Catalog> {
    return this.call<Catalog>({ method: "GET", path: "/v1/catalog", ...this.readSpec(options) });
  }

  // ------------------------------------------------------------------ live events

  /**
   * The live event stream (`GET /v1/events`) as an async iterator: `terminal.status`,
   * `checkout.progress`, `checkout.finished`, and `stream.reset` (events were missed: re-read
   * the terminals and any checkout under way). It reconnects by itself after a network failure,
   * a dead connection (no heartbeat) or a daemon restart, resuming with `Last-Event-ID`; it ends
   * when `signal` aborts or the loop breaks. Open it before `checkout()` to see a sale from its
   * start. Throws `Unauthorized` or `ValidationError` (a bad filter): no retry helps those.
   */
  async *events(options: EventsOptions = {}): AsyncGenerator<LiveEvent, void, undefined> {
    const url = `${this.baseUrl}/v1/events${queryString({ types: options.types?.join(","), checkout: options.checkout })}`;
    const idleMs = options.idleTimeoutMs ?? 45_000;
    const maxDelay = options.maxReconnectDelayMs ?? 15_000;
    let lastEventId: string | null = options.lastEventId ?? null;
    let retryMs = 2_000;
    let failures = 0;
    while (!options.signal?.aborted) {
      // The connection ends when the caller aborts, or when nothing came for idleMs (dead Wi-Fi).
      let idle: ReturnType<typeof setTimeout> | undefined;
      const idleAbort = new AbortController();
      const combined = linkedSignal([options.signal, idleAbort.signal]);
      const resetIdle = () => {
        if (idle !== undefined) clearTimeout(idle);
        idle = setTimeout(() => idleAbort.abort(new NetworkError(`no byte from the event stream for ${idleMs} ms`)), idleMs);
      };
      let delivered = false;
      let opened = false;
      let problem: unknown = null;
      try {
        resetIdle();
        const headers: Record<string, string> = { ...this.headers(), Accept: "text/event-stream", "Cache-Control": "no-cache" };
        if (lastEventId) headers["Last-Event-ID"] = lastEventId;
        const response = await this.sseTransport({ url, headers, signal: combined.signal });
        if (response.status !== 200) {
          let text = "";
          for await (const chunk of response.body) text += chunk;
          const error = errorFromAnswer(response.status, parseBody(text));
          if (error.retry !== "same_key") throw error;
          problem = error;
        } else {
          opened = true;
          options.onConnection?.("open");
          const parser = new SseParser();
          parser.lastEventId = lastEventId;
          for await (const chunk of response.body) {
            resetIdle();
            for (const message of parser.push(chunk)) {
              lastEventId = parser.lastEventId;
              let data: StreamEvent;
              try {
                data = JSON.parse(message.data) as StreamEvent;
              } catch {
                continue; // not an event of ours
              }
              if (typeof data !== "object" || data === null || typeof data.type !== "string") continue;
              delivered = true;
              failures = 0;
              yield { ...data, eventId: message.id } as LiveEvent;
            }
            lastEventId = parser.lastEventId;
            if (parser.retryMs !== null) retryMs = parser.retryMs;
          }
        }
      } catch (error) {
        if (options.signal?.aborted) return;
        if (error instanceof GatewayError && error.retry !== "same_key") throw error;
        problem = error;
      } finally {
        if (idle !== undefined) clearTimeout(idle);
        idleAbort.abort(); // closes this connection (through `combined`), however the loop left it
        combined.done();
      }
      if (opened) options.onConnection?.("closed", problem ?? undefined);
      if (options.signal?.aborted) return;
      // A stream that delivered and ended (recycled, or a reader dropped as too slow) resumes at
      // once; one that failed waits, longer each time it fails again.
      const delay = delivered ? 0 : Math.min(maxDelay, retryMs * 2 ** Math.min(failures, 6));
      failures = delivered ? 0 : failures + 1;
      try {
        await sleep(delay, options.signal);
      } catch {
        return;
      }
    }
  }

  // ------------------------------------------------------------------ internals

  private headers(): Record<string, string> {
    const headers: Record<string, string> = { ...this.extraHeaders };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    return headers;
  }

  private readSpec(options: CallOptions): Omit<CallSpec, "method" | "path"> {
    return {
      signal: options.signal,
      deadline: Date.now() + (options.deadlineMs ?? this.requestTimeoutMs),
      changes: false,
    };
  }

  /** One HTTP exchange: the status and the decoded body (JSON, else the text). NetworkError when no answer came. */
  private async request(spec: CallSpec, timeoutMs: number): Promise<Answer> {
    const link = linkedSignal([spec.signal], timeoutMs);
    const headers: Record<string, string> = { ...this.headers(), Accept: spec.accept ?? "application/json" };
    let body: string | undefined;
    if (spec.body !== undefined) {
      body = JSON.stringify(spec.body);
      headers["Content-Type"] = "application/json";
    }
    try {
      const response = await this.fetchFn(this.baseUrl + spec.path, { method: spec.method, headers, body, signal: link.signal });
      const text = await response.text();
      return { status: response.status, body: spec.accept && spec.accept !== "application/json" && response.status < 300 ? text : parseBody(text) };
    } catch (error) {
      if (spec.signal?.aborted) throw abortError(spec.signal);
      const why = link.timedOut() ? `no answer within ${timeoutMs} ms` : describe(error);
      throw new NetworkError(`${spec.method} ${spec.path}: gatewayd at ${this.baseUrl} did not answer (${why})`, error);
    } finally {
      link.done();
    }
  }

  /** A request with the client's retries: network failures and `same_key` answers are sent again (same body, same key). */
  private async call<T>(spec: CallSpec): Promise<T> {
    let attempt = 0;
    let pollDelay = this.poll.initialDelayMs;
    let checkout: Checkout | null = null;
    let sent = false;
    const outcomeUnknown = (why: "deadline" | "network" | "aborted", cause: unknown, message: string) =>
      new OutcomeUnknown({ why, message, checkout, idempotencyKey: spec.key ?? checkout?.idempotency_key ?? null, cause });
    for (;;) {
      const remaining = spec.deadline - Date.now();
      let answer: Answer;
      try {
        if (spec.signal?.aborted) throw abortError(spec.signal);
        sent = true;
        answer = await this.request(spec, Math.min(this.requestTimeoutMs, Math.max(1_000, remaining)));
      } catch (error) {
        if (!(error instanceof NetworkError)) {
          if (spec.changes && sent) throw outcomeUnknown("aborted", error, `${spec.path}: stopped waiting; it may have gone through (look it up, or send it again with the same key)`);
          throw error;
        }
        attempt++;
        const delay = this.backoff(attempt);
        if (attempt >= this.retry.attempts || Date.now() + delay >= spec.deadline) {
          if (spec.changes) throw outcomeUnknown("network", error, `${error.message}; it may have gone through: send it again with the same key`);
          throw error;
        }
        await this.wait(delay, spec, sent, outcomeUnknown);
        continue;
      }
      if (answer.status >= 200 && answer.status < 300) return answer.body as T;
      const error = errorFromAnswer(answer.status, answer.body, spec.key);
      if (error.checkout) checkout = error.checkout;
      if (error.code === "outcome_pending") {
        if (!spec.resendWhilePending) throw error;
        if (Date.now() + pollDelay >= spec.deadline) throw outcomeUnknown("deadline", error, `${spec.path}: the outcome is still pending`);
        await this.wait(pollDelay, spec, sent, outcomeUnknown);
        pollDelay = Math.min(this.poll.maxDelayMs, pollDelay * 1.5);
        continue;
      }
      if (error.retry === "same_key") {
        attempt++;
        const delay = this.backoff(attempt);
        if (attempt < this.retry.attempts && Date.now() + delay < spec.deadline) {
          await this.wait(delay, spec, sent, outcomeUnknown);
          continue;
        }
      }
      throw error;
    }
  }

  private async wait(
    ms: number,
    spec: CallSpec,
    sent: boolean,
    outcomeUnknown: (why: "aborted", cause: unknown, message: string) => OutcomeUnknown,
  ): Promise<void> {
    try {
      await sleep(ms, spec.signal);
    } catch (error) {
      if (spec.changes && sent) throw outcomeUnknown("aborted", error, `${spec.path}: stopped waiting; it may have gone through`);
      throw error;
    }
  }

  private backoff(attempt: number): number {
    const base = Math.min(this.retry.maxDelayMs, this.retry.initialDelayMs * 2 ** Math.max(0, attempt - 1));
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }

  /** Polls a checkout answered `outcome_pending` until it is final; OutcomeUnknown at the deadline. */
  private async waitForOutcome(
    pending: Checkout | null,
    key: string,
    deadline: number,
    signal: AbortSignal | undefined,
  ): Promise<Checkout> {
    let current = pending;
    let delay = this.poll.initialDelayMs;
    const unknown = (why: "deadline" | "aborted", cause?: unknown) =>
      new OutcomeUnknown({
        why,
        message:
          why === "deadline"
            ? "the checkout's outcome is not known yet: the card may have been charged; gatewayd finishes it on its own (look it up, or send it again with the same key)"
            : "stopped waiting for the checkout's outcome; it goes on at gatewayd",
        checkout: current,
        idempotencyKey: key,
        cause,
      });
    for (;;) {
      if (current && FINAL_STATUSES.has(current.status)) return current;
      if (Date.now() + delay >= deadline) throw unknown("deadline");
      try {
        await sleep(delay, signal);
      } catch (error) {
        throw unknown("aborted", error);
      }
      delay = Math.min(this.poll.maxDelayMs, delay * 1.5);
      const path = current ? `/v1/checkouts/${encodeURIComponent(current.id)}` : `/v1/checkouts?idempotency_key=${encodeURIComponent(key)}`;
      let answer: Answer;
      try {
        answer = await this.request({ method: "GET", path, signal, deadline, changes: false }, Math.min(this.requestTimeoutMs, Math.max(1_000, deadline - Date.now())));
      } catch (error) {
        if (error instanceof NetworkError) continue; // the network again: poll on
        throw unknown("aborted", error);
      }
      if (answer.status === 200 && isCheckout(answer.body)) {
        current = answer.body;
      } else if (answer.status === 401) {
        throw errorFromAnswer(answer.status, answer.body, key);
      }
    }
  }
}

/** `?a=1&b=2` of the values given, built by hand: React Native's URL polyfill leaves most of its query API unimplemented. */
function queryString(values: Record<string, string | number | undefined>): string {
  const parts = Object.entries(values)
    .filter(([, value]) => value !== undefined && value !== "")
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(String(value))}`);
  return parts.length ? `?${parts.join("&")}` : "";
}

function parseBody(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    const extra = cause instanceof Error ? `: ${cause.message}` : "";
    return `${error.message}${extra}`;
  }
  return String(error);
}
