/** Friendly names for the generated OpenAPI types (src/schema.ts). */
import type { components } from "./schema.js";

type Schemas = components["schemas"];

export type { components, paths } from "./schema.js";

/** `POST /v1/checkouts`: lines, tenders (cash, card, split) and one idempotency key per sale. */
export type CheckoutRequest = Schemas["CheckoutRequest"];
export type Line = Schemas["Line"];
export type CashTender = Schemas["CashTender"];
export type CardTender = Schemas["CardTender"];
/** A checkout in whatever state it is (the answer of POST and GET /v1/checkouts). */
export type Checkout = Schemas["CheckoutView"];
export type CheckoutStatus = Checkout["status"];
export type Tender = Schemas["TenderView"];
export type TenderStatus = Tender["status"];
export type PaymentType = NonNullable<CardTender["payment_type"]>;
export type Failure = Schemas["Failure"];
export type TenderFailure = Schemas["TenderFailure"];
/** Why a card did not charge (docs/api.md, "Why a card did not charge"): the POS branches on it. */
export type FailureReason = TenderFailure["reason"];
export type RefundRequest = Schemas["RefundRequest"];
export type Refund = Schemas["RefundView"];
export type Health = Schemas["HealthView"];
export type Terminal = Schemas["TerminalView"];
export type TerminalStatus = Terminal["status"];
export type Catalog = Schemas["CatalogView"];
export type CatalogItem = Schemas["CatalogItem"];
export type ErrorBody = Schemas["ErrorBody"];
export type ErrorInfo = Schemas["ErrorInfo"];
/** What to do after an error: `same_key` send it again with the same key, `new_key` it is over, `no` fix it first. */
export type RetryHint = ErrorInfo["retry"];

/** The `data` of each event of GET /v1/events. */
export type StreamEvent = Schemas["StreamEvent"];
export type TerminalStatusEvent = Schemas["TerminalStatusEvent"];
export type CheckoutProgressEvent = Schemas["CheckoutProgressEvent"];
export type CheckoutFinishedEvent = Schemas["CheckoutFinishedEvent"];
export type StreamResetEvent = Schemas["StreamResetEvent"];
/** The event types a stream can be filtered to (`stream.reset` is always sent). */
export type EventType = Exclude<StreamEvent["type"], "stream.reset">;
/** A phase of `checkout.progress`. */
export type CheckoutPhase = CheckoutProgressEvent["phase"];
/** An event as `GatewayClient.events()` yields it: its data, and its SSE id (`<run>-<n>`). */
export type LiveEvent = StreamEvent & { eventId: string | null };
