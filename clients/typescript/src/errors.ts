/**
 * Typed errors: one class per thing the POS does something different about.
 *
 * Every error is a `GatewayError` with the daemon's `code`, the HTTP `status`, and its `retry` hint
 * (docs/api.md, "Errors"): `same_key` — sending the same request again with the same idempotency
 * key is safe; `new_key` — this checkout is over, another attempt is a new sale with a new key;
 * `no` — fix the request (or an operator acts) first. Errors answered after the checkout was
 * recorded carry the `checkout` as it stands.
 */
import type { Checkout, ErrorInfo, FailureReason, RetryHint } from "./types.js";

export interface GatewayErrorInit {
  code: string;
  message: string;
  status?: number | null;
  retry: RetryHint;
  details?: Record<string, unknown>;
  checkout?: Checkout | null;
  idempotencyKey?: string | null;
  cause?: unknown;
}

export class GatewayError extends Error {
  override name = "GatewayError";
  /** The daemon's error code (`card_declined`, `terminal_offline` …), or the client's own (`network_error`, `outcome_unknown`). */
  readonly code: string;
  /** The HTTP status, or null when no answer came. */
  readonly status: number | null;
  /** What to do next: `same_key`, `new_key` or `no`. */
  readonly retry: RetryHint;
  readonly details: Record<string, unknown>;
  /** The checkout as it stands, when the daemon had recorded it. */
  readonly checkout: Checkout | null;
  /** The idempotency key of the request that failed. */
  readonly idempotencyKey: string | null;
  override readonly cause?: unknown;

  constructor(init: GatewayErrorInit) {
    super(init.message);
    this.code = init.code;
    this.status = init.status ?? null;
    this.retry = init.retry;
    this.details = init.details ?? {};
    this.checkout = init.checkout ?? null;
    this.idempotencyKey = init.idempotencyKey ?? init.checkout?.idempotency_key ?? null;
    if (init.cause !== undefined) this.cause = init.cause;
  }
}

/** 402 `card_declined`: a card did not charge; every other tender was voided. Ask for another card (`reason`). */
export class CardDeclined extends GatewayError {
  override name = "CardDeclined";
  declare readonly checkout: Checkout;
  /** Why: `declined`, `cancelled_by_customer`, `no_card_presented`, `partial_approval_reversed` … */
  readonly reason: FailureReason | null;
  /** The terminal's and the issuer's words, for the cashier (`Declined: DO NOT HONOR`). */
  readonly cashierMessage: string;
  /** The issuer's own response code, when it gave one. */
  readonly hostCode: string | null;
  /** The index of the tender that failed, when one did. */
  readonly tenderIndex: number | null;

  constructor(init: GatewayErrorInit & { checkout: Checkout }) {
    super(init);
    const index = init.checkout.tenders.findIndex((t) => t.failure != null);
    const tender = index >= 0 ? init.checkout.tenders[index] : undefined;
    const detailReason = typeof init.details?.reason === "string" ? (init.details.reason as FailureReason) : null;
    this.reason = init.checkout.failure?.reason ?? tender?.failure?.reason ?? detailReason;
    this.cashierMessage = tender?.failure?.message || init.checkout.failure?.message || init.message;
    this.hostCode = tender?.failure?.host_code ?? null;
    this.tenderIndex = index >= 0 ? index : null;
  }
}

/** 402 `checkout_cancelled`: cancelled before any card was charged; nothing is owed. Start a new sale. */
export class CheckoutCancelled extends GatewayError {
  override name = "CheckoutCancelled";
}

/** 503 `terminal_offline`: the terminal could not be reached; nothing was charged. Same key once it is back, or another terminal. */
export class TerminalOffline extends GatewayError {
  override name = "TerminalOffline";
}

/** 503 `terminal_busy`: the terminal stayed busy; nothing was charged. Same key, or another terminal. */
export class TerminalBusy extends GatewayError {
  override name = "TerminalBusy";
}

/** 503 `terminal_misconfigured`: the terminal refused gatewayd's credentials; an operator must fix it. */
export class TerminalMisconfigured extends GatewayError {
  override name = "TerminalMisconfigured";
}

/** 422 `unknown_terminal`: a card tender names a terminal that is not configured. */
export class UnknownTerminal extends GatewayError {
  override name = "UnknownTerminal";
}

export interface ShortSku {
  sku: string;
  available?: number;
  requested?: number;
}

/** 422 `insufficient_inventory`: a line asks for more than is available; nothing was charged. */
export class InsufficientInventory extends GatewayError {
  override name = "InsufficientInventory";
  /** Each SKU short, with what is available and what was asked. */
  readonly skus: ShortSku[];

  constructor(init: GatewayErrorInit) {
    super(init);
    const skus = Array.isArray(init.details?.skus) ? (init.details.skus as unknown[]) : [];
    this.skus = skus.map((s) => (typeof s === "string" ? { sku: s } : (s as ShortSku)));
  }
}

/** 422 `untracked_sku`: the store refuses SKUs it keeps no stock of; nothing was charged. */
export class UntrackedSku extends GatewayError {
  override name = "UntrackedSku";
  readonly skus: string[];

  constructor(init: GatewayErrorInit) {
    super(init);
    this.skus = Array.isArray(init.details?.skus) ? (init.details.skus as unknown[]).map(String) : [];
  }
}

/** 409 `idempotency_conflict`: this key was used with another request. A bug in the POS: a new sale needs a new key. */
export class IdempotencyConflict extends GatewayError {
  override name = "IdempotencyConflict";
}

/** 400 `validation_error`: the request is wrong; `field` names what (`lines[0].unit_price`). */
export class ValidationError extends GatewayError {
  override name = "ValidationError";
  readonly field: string | null;

  constructor(init: GatewayErrorInit) {
    super(init);
    this.field = typeof init.details?.field === "string" ? init.details.field : null;
  }
}

/** 401 `unauthorized`: no token, or not the store's. */
export class Unauthorized extends GatewayError {
  override name = "Unauthorized";
}

/** 404 `not_found`: unknown checkout, terminal or path. */
export class NotFound extends GatewayError {
  override name = "NotFound";
}

/** 409 `invalid_state`: the operation does not fit the checkout's state (a void of a checkout not completed …). */
export class InvalidState extends GatewayError {
  override name = "InvalidState";
}

/** 409 `already_settled`: the void found a settled charge; the checkout is voided but that charge stands: refund `refundAmount`. */
export class AlreadySettled extends GatewayError {
  override name = "AlreadySettled";
  readonly refundAmount: number | null;

  constructor(init: GatewayErrorInit) {
    super(init);
    this.refundAmount = typeof init.details?.refund_amount === "number" ? init.details.refund_amount : null;
  }
}

/** 402 `refund_declined`: nothing was refunded. */
export class RefundDeclined extends GatewayError {
  override name = "RefundDeclined";
}

/** 503 `database_unavailable` or `shutting_down` (after the client's own retries): nothing was started. */
export class Unavailable extends GatewayError {
  override name = "Unavailable";
}

/**
 * The outcome is not known yet — never read this as "failed": the card may have been charged.
 * The daemon finishes the checkout on its own (it asks the terminal); look it up later with
 * `get(checkout.id)` or `findByKey(key)`, or send the same request again with the same key (safe).
 * `why`: `deadline` (still pending when the client's deadline ran out), `network` (no answer
 * from the daemon), `aborted` (the caller's signal stopped the wait).
 */
export class OutcomeUnknown extends GatewayError {
  override name = "OutcomeUnknown";
  readonly why: "deadline" | "network" | "aborted";

  constructor(init: Omit<GatewayErrorInit, "code" | "retry"> & { why: "deadline" | "network" | "aborted" }) {
    super({ ...init, code: "outcome_unknown", retry: "same_key" });
    this.why = init.why;
  }
}

/** No answer from the daemon (connection refused, reset, timed out) on a request that changes nothing. */
export class NetworkError extends GatewayError {
  override name = "NetworkError";

  constructor(message: string, cause?: unknown) {
    super({ code: "network_error", message, retry: "same_key", cause });
  }
}

type ErrorClass = new (init: GatewayErrorInit & { checkout: Checkout }) => GatewayError;

const BY_CODE: Record<string, ErrorClass> = {
  card_declined: CardDeclined,
  checkout_cancelled: CheckoutCancelled,
  refund_declined: RefundDeclined,
  terminal_offline: TerminalOffline,
  terminal_busy: TerminalBusy,
  terminal_misconfigured: TerminalMisconfigured,
  unknown_terminal: UnknownTerminal,
  insufficient_inventory: InsufficientInventory,
  untracked_sku: UntrackedSku,
  idempotency_conflict: IdempotencyConflict,
  validation_error: ValidationError,
  unauthorized: Unauthorized,
  not_found: NotFound,
  invalid_state: InvalidState,
  already_settled: AlreadySettled,
  database_unavailable: Unavailable,
  shutting_down: Unavailable,
};

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Whether an answer's body is a checkout (a 402/503/504 after the intent carries one beside its error). */
export function isCheckout(value: unknown): value is Checkout {
  return isObject(value) && typeof value.id === "string" && typeof value.status === "string" && Array.isArray(value.tenders);
}

/** The typed error of a non-2xx answer (`body`: its decoded JSON, or its text when it was not JSON). */
export function errorFromAnswer(status: number, body: unknown, idempotencyKey?: string | null): GatewayError {
  const info = isObject(body) && isObject(body.error) ? (body.error as Partial<ErrorInfo>) : null;
  const checkout = isCheckout(body) ? body : null;
  if (!info || typeof info.code !== "string") {
    // Not the daemon's answer (a proxy's, or a bug): a 5xx may be retried, anything else may not.
    const text = typeof body === "string" ? body.slice(0, 200) : JSON.stringify(body ?? null).slice(0, 200);
    return new GatewayError({
      code: status === 401 ? "unauthorized" : `http_${status}`,
      message: `HTTP ${status}: ${text}`,
      status,
      retry: status >= 500 ? "same_key" : "no",
      checkout,
      idempotencyKey,
    });
  }
  const init: GatewayErrorInit = {
    code: info.code,
    message: info.message ?? info.code,
    status,
    retry: info.retry ?? (status >= 500 ? "same_key" : "no"),
    details: isObject(info.details) ? info.details : {},
    checkout,
    idempotencyKey,
  };
  const Class = BY_CODE[info.code];
  if (Class === CardDeclined && !checkout) return new GatewayError(init);
  return Class ? new Class(init as GatewayErrorInit & { checkout: Checkout }) : new GatewayError(init);
}

/** The error a final checkout that did not complete stands for: what the daemon answers for it (docs/api.md). */
export function errorFromCheckout(checkout: Checkout): GatewayError {
  const failure = checkout.failure?.code;
  let answer: [code: string, retry: RetryHint, status: number];
  if (failure === "terminal_offline" || failure === "terminal_busy") answer = [failure, "same_key", 503];
  else if (failure === "terminal_misconfigured") answer = [failure, "no", 503];
  else if (checkout.status === "payment_failed" || (checkout.status === "cancelled" && checkout.failure)) answer = ["card_declined", "new_key", 402];
  else if (checkout.status === "cancelled") answer = ["checkout_cancelled", "new_key", 402];
  else answer = ["invalid_state", "no", 409]; // voided or refunded since
  const [code, retry, status] = answer;
  const reason = checkout.failure?.reason;
  const error = {
    code,
    message: checkout.failure?.message || `checkout ${checkout.status}`,
    retry,
    details: { checkout_id: checkout.id, ...(reason ? { reason } : {}) },
  };
  return errorFromAnswer(status, { ...checkout, error });
}
