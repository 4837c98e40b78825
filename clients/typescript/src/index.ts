/**
 * @gatewayd/client — the POS client of gatewayd (docs/pos-integration.md).
 *
 *   const gw = new GatewayClient({ baseUrl, token });
 *   const key = newIdempotencyKey("reg1");          // one per sale, kept until the sale is over
 *   const checkout = await gw.checkout({ idempotency_key: key, lines, tenders });
 */
export { GatewayClient, FINAL_STATUSES } from "./client.js";
export type { CallOptions, EventsOptions, GatewayClientOptions, PollPolicy, ReceiptOptions, RetryPolicy } from "./client.js";
export {
  AlreadySettled,
  CardDeclined,
  CheckoutCancelled,
  GatewayError,
  IdempotencyConflict,
  InsufficientInventory,
  InvalidState,
  NetworkError,
  NotFound,
  OutcomeUnknown,
  RefundDeclined,
  TerminalBusy,
  TerminalMisconfigured,
  TerminalOffline,
  Unauthorized,
  Unavailable,
  UnknownTerminal,
  UntrackedSku,
  ValidationError,
  errorFromAnswer,
  errorFromCheckout,
} from "./errors.js";
export type { GatewayErrorInit, ShortSku } from "./errors.js";
export type { FetchLike, ResponseLike } from "./fetch.js";
export { newIdempotencyKey } from "./keys.js";
export { SseParser, fetchTransport, xhrTransport } from "./sse.js";
export type { SseMessage, SseRequest, SseResponse, SseTransport, XhrLike, XhrTransportOptions } from "./sse.js";
export type * from "./types.js";
