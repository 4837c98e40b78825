-- gatewayd schema, version 1.
--
-- Rules every migration here follows (the deployment guide's "old code still works"):
--   * additive only: new tables, new nullable or defaulted columns, nothing dropped or renamed;
--   * re-runnable: IF NOT EXISTS / CREATE OR REPLACE, so applying a file twice is harmless;
--   * every table carries store_id and every primary or unique key starts with it, so a chain
--     can shard by store (Citus, distribution column store_id) without a schema change;
--   * money is bigint minor units with CHECK (>= 0); statuses are CHECK-constrained text.

CREATE TABLE IF NOT EXISTS payment_processors (
    store_id          text        NOT NULL,
    id                text        NOT NULL,              -- the terminal id from the config
    processor_name    text        NOT NULL,
    driver            text        NOT NULL,
    is_active         boolean     NOT NULL DEFAULT true, -- false once removed from the config
    is_live           boolean     NOT NULL DEFAULT true, -- false for sandbox / simulator terminals
    health_status     text        NOT NULL DEFAULT 'unknown'
                      CHECK (health_status IN ('online', 'offline', 'busy', 'unknown')),
    last_health_check timestamptz,
    last_health_error text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, id)
);

CREATE SEQUENCE IF NOT EXISTS order_number_seq;

CREATE TABLE IF NOT EXISTS register_sessions (
    store_id       text        NOT NULL,
    id             uuid        NOT NULL,
    register_id    text        NOT NULL,
    status         text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    cash_total     bigint      NOT NULL DEFAULT 0 CHECK (cash_total >= 0),
    card_total     bigint      NOT NULL DEFAULT 0 CHECK (card_total >= 0),
    checkout_count integer     NOT NULL DEFAULT 0 CHECK (checkout_count >= 0),
    refund_total   bigint      NOT NULL DEFAULT 0 CHECK (refund_total >= 0),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    PRIMARY KEY (store_id, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS register_sessions_one_open
    ON register_sessions (store_id, register_id) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS orders (
    store_id            text        NOT NULL,
    id                  uuid        NOT NULL,
    order_number        text        NOT NULL,
    status              text        NOT NULL DEFAULT 'pending_payment' CHECK (status IN (
                            'pending_payment', 'payment_processing', 'payment_authorized', 'completed',
                            'payment_failed', 'cancelled', 'voided', 'refunded', 'partially_refunded')),
    payment_status      text        NOT NULL DEFAULT 'pending' CHECK (payment_status IN (
                            'pending', 'processing', 'authorized', 'paid', 'failed', 'voided',
                            'refunded', 'partially_refunded')),
    idempotency_key     text        NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    request_hash        text        NOT NULL,
    card_mode           text        NOT NULL DEFAULT 'sale' CHECK (card_mode IN ('sale', 'auth_capture')),
    subtotal            bigint      NOT NULL CHECK (subtotal >= 0),
    tax                 bigint      NOT NULL DEFAULT 0 CHECK (tax >= 0),
    discount            bigint      NOT NULL DEFAULT 0 CHECK (discount >= 0),
    total               bigint      NOT NULL CHECK (total >= 0),
    change_due          bigint      NOT NULL DEFAULT 0 CHECK (change_due >= 0),
    refunded_amount     bigint      NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    currency            text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    register_id         text,
    register_session_id uuid,
    customer_id         text,
    loyalty_points      bigint      NOT NULL DEFAULT 0 CHECK (loyalty_points >= 0),
    failure_code        text,
    failure_reason      text,
    -- Which daemon drives this order until when: recovery by another daemon waits for expiry,
    -- a restarted daemon takes back its own at once (lease_owner is a stable instance id).
    lease_owner         text,
    lease_until         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    completed_at        timestamptz,
    failed_at           timestamptz,
    PRIMARY KEY (store_id, id),
    UNIQUE (store_id, idempotency_key),
    UNIQUE (store_id, order_number),
    CHECK (total = subtotal + tax - discount),
    CHECK (refunded_amount <= total)
);
CREATE INDEX IF NOT EXISTS orders_open_by_status
    ON orders (store_id, status, created_at)
    WHERE status IN ('pending_payment', 'payment_processing', 'payment_authorized');
CREATE INDEX IF NOT EXISTS orders_created ON orders (store_id, created_at);

CREATE TABLE IF NOT EXISTS order_items (
    store_id   text    NOT NULL,
    order_id   uuid    NOT NULL,
    line_no    integer NOT NULL CHECK (line_no >= 0),
    sku        text    NOT NULL CHECK (length(sku) BETWEEN 1 AND 100),
    quantity   integer NOT NULL CHECK (quantity > 0),
    unit_price bigint  NOT NULL CHECK (unit_price >= 0),
    restocked  integer NOT NULL DEFAULT 0 CHECK (restocked >= 0 AND restocked <= quantity),
    PRIMARY KEY (store_id, order_id, line_no),
    FOREIGN KEY (store_id, order_id) REFERENCES orders (store_id, id)
);

CREATE TABLE IF NOT EXISTS inventory (
    store_id   text        NOT NULL,
    sku        text        NOT NULL,
    name       text,
    on_hand    bigint      NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, sku),
    CHECK (reserved <= on_hand)
);

CREATE TABLE IF NOT EXISTS loyalty_accounts (
    store_id    text        NOT NULL,
    customer_id text        NOT NULL,
    points      bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, customer_id)
);

CREATE TABLE IF NOT EXISTS loyalty_ledger (
    store_id    text        NOT NULL,
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    customer_id text        NOT NULL,
    order_id    uuid        NOT NULL,
    points      bigint      NOT NULL,                    -- positive when earned, negative when taken back
    reason      text        NOT NULL CHECK (reason IN ('earn', 'refund', 'void')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, id)
);
CREATE INDEX IF NOT EXISTS loyalty_ledger_order ON loyalty_ledger (store_id, order_id);

-- Refund requests (POST /v1/checkouts/{id}/refunds): idempotent by their own key.
CREATE TABLE IF NOT EXISTS refunds (
    store_id        text        NOT NULL,
    id              uuid        NOT NULL,
    order_id        uuid        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    restock         boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'completed', 'failed')),
    failure_reason  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (store_id, id),
    UNIQUE (store_id, idempotency_key),
    FOREIGN KEY (store_id, order_id) REFERENCES orders (store_id, id)
);

-- One row per terminal (or cash) transaction. kind = 'payment' for a checkout's tenders,
-- 'refund' for a Return sent for a refund. reference_id is the id the terminal knows it by:
-- minted once per intent, never re-minted.
CREATE TABLE IF NOT EXISTS payment_transactions (
    store_id             text        NOT NULL,
    id                   uuid        NOT NULL,
    order_id             uuid        NOT NULL,
    kind                 text        NOT NULL DEFAULT 'payment' CHECK (kind IN ('payment', 'refund')),
    refund_id            uuid,
    tender_index         integer     NOT NULL DEFAULT 0 CHECK (tender_index >= 0),
    tender_type          text        NOT NULL CHECK (tender_type IN ('cash', 'card')),
    operation            text        NOT NULL DEFAULT 'sale' CHECK (operation IN ('cash', 'sale', 'auth', 'return')),
    amount               bigint      NOT NULL CHECK (amount >= 0),
    approved_amount      bigint      CHECK (approved_amount >= 0),
    tendered             bigint      CHECK (tendered >= 0),
    status               text        NOT NULL DEFAULT 'pending' CHECK (status IN (
                             'pending', 'processing', 'approved', 'declined', 'failed', 'unknown',
                             'voided', 'refunded')),
    capture_status       text        CHECK (capture_status IN ('pending', 'captured')),
    reference_id         text        NOT NULL CHECK (reference_id ~ '^[A-Za-z0-9]{1,50}$'),
    payment_processor_id text,
    auth_code            text,
    card_brand           text,
    last4                text        CHECK (last4 ~ '^[0-9]{4}$'),
    batch_number         text,
    transaction_number   text,
    status_code          text,
    raw_response         jsonb,                          -- the terminal's answer, card data reduced to brand + last4
    attempts             integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error           text,
    timeout_s            integer,
    sent_at              timestamptz,                    -- when the request first left for the terminal
    resolved_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, id),
    UNIQUE (store_id, reference_id),
    FOREIGN KEY (store_id, order_id) REFERENCES orders (store_id, id),
    FOREIGN KEY (store_id, payment_processor_id) REFERENCES payment_processors (store_id, id),
    CHECK (tender_type = 'cash' OR payment_processor_id IS NOT NULL)
);
CREATE INDEX IF NOT EXISTS payment_transactions_order ON payment_transactions (store_id, order_id);
CREATE INDEX IF NOT EXISTS payment_transactions_unresolved
    ON payment_transactions (store_id, status, updated_at)
    WHERE status IN ('processing', 'unknown');
CREATE INDEX IF NOT EXISTS payment_transactions_created ON payment_transactions (store_id, created_at);

-- Append-only journal of every state change.
CREATE TABLE IF NOT EXISTS audit_events (
    store_id       text        NOT NULL,
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    at             timestamptz NOT NULL DEFAULT now(),
    kind           text        NOT NULL,
    order_id       uuid,
    transaction_id uuid,
    detail         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (store_id, id)
);
CREATE INDEX IF NOT EXISTS audit_events_order ON audit_events (store_id, order_id);

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_events_no_change') THEN
        CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
    END IF;
END;
$$;
