-- 009: what the cashier and the customer see (issue 17): receipts, outcomes the cashier can act
-- on, and the payment type a card runs as.
--
-- payment_transactions gains nullable columns (old rows and old code are untouched):
--   * payment_type: the card's type (credit, debit, card = the customer chooses, ebt_food,
--     ebt_cash, gift), recorded with the intent; once the terminal approves, the type it ran as
--     (for `card`, the customer's choice). Inquiry, void and return use it. NULL: credit (every
--     card before 009 ran as credit);
--   * what a receipt needs of an approved card: entry_method, application_label, aid,
--     host_reference (the processor's RRN), and the terminal's own receipt text, per copy
--     (receipt_customer, receipt_merchant). Brand, last four, auth code, batch and transaction
--     numbers already have columns;
--   * why a card did not charge: decline_reason (what the POS branches on), host_code and
--     host_message (the processor's own code and words, for the cashier).
--
-- Columns, not one jsonb `receipt`: card data minimisation is easier to hold when the database
-- itself refuses what must never be kept. Each column admits only its own kind of value (an AID is
-- hex, an entry method one of four words, a reason one of nine), so no later code can slip a BIN,
-- a name or an expiry into a bag of keys nobody reads; the receipt texts, the only free text, are
-- scrubbed by the codec before they get here (gatewayd/terminals/spin/codec.py, scrub_receipt).
-- And the reports read entry_method and decline_reason with plain SQL, indexable if need be.

ALTER TABLE payment_transactions
    ADD COLUMN IF NOT EXISTS payment_type text
        CHECK (payment_type IN ('credit', 'debit', 'card', 'ebt_food', 'ebt_cash', 'gift')),
    ADD COLUMN IF NOT EXISTS entry_method text
        CHECK (entry_method IN ('chip', 'contactless', 'swipe', 'manual')),
    ADD COLUMN IF NOT EXISTS application_label text CHECK (length(application_label) BETWEEN 1 AND 32),
    ADD COLUMN IF NOT EXISTS aid text CHECK (aid ~ '^[0-9A-F]{10,32}$'),
    ADD COLUMN IF NOT EXISTS host_reference text CHECK (host_reference ~ '^[A-Za-z0-9-]{1,50}$'),
    ADD COLUMN IF NOT EXISTS receipt_customer text CHECK (length(receipt_customer) BETWEEN 1 AND 8000),
    ADD COLUMN IF NOT EXISTS receipt_merchant text CHECK (length(receipt_merchant) BETWEEN 1 AND 8000),
    ADD COLUMN IF NOT EXISTS decline_reason text CHECK (decline_reason IN (
        'declined', 'cancelled_by_customer', 'no_card_presented', 'partial_approval_reversed',
        'terminal_offline', 'terminal_busy', 'terminal_misconfigured', 'voided_at_terminal', 'not_charged')),
    ADD COLUMN IF NOT EXISTS host_code text CHECK (length(host_code) BETWEEN 1 AND 10),
    ADD COLUMN IF NOT EXISTS host_message text CHECK (length(host_message) BETWEEN 1 AND 200);

-- The targets report (gatewayd report --targets) reads the latest reconciliation and the checkouts
-- of the last 30 days.
CREATE INDEX IF NOT EXISTS audit_events_reconciled
    ON audit_events (store_id, at) WHERE kind = 'reconcile.finished';

-- Prepare: as in 007, with each card tender's payment type in the intent.
CREATE OR REPLACE FUNCTION gw_prepare_checkout(p_store text, p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_id        uuid := (p->>'id')::uuid;
    v_existing  record;
    v_short     jsonb;
    v_untracked jsonb;
    v_number    text;
BEGIN
    SELECT id, request_hash INTO v_existing
      FROM orders WHERE store_id = p_store AND idempotency_key = p->>'idempotency_key';
    IF FOUND THEN
        RETURN jsonb_build_object('outcome', 'exists', 'id', v_existing.id,
                                  'request_hash', v_existing.request_hash);
    END IF;

    IF coalesce(p->>'untracked_skus', 'allow') = 'refuse' THEN
        SELECT jsonb_agg(DISTINCT l->>'sku') INTO v_untracked
          FROM jsonb_array_elements(p->'lines') AS l
         WHERE NOT EXISTS (SELECT 1 FROM inventory i WHERE i.store_id = p_store AND i.sku = l->>'sku');
        IF v_untracked IS NOT NULL THEN
            RETURN jsonb_build_object('outcome', 'untracked', 'skus', v_untracked);
        END IF;
    END IF;

    PERFORM 1 FROM inventory i JOIN (SELECT l->>'sku' AS sku, sum((l->>'quantity')::bigint) AS qty
            FROM jsonb_array_elements(p->'lines') AS l GROUP BY 1) w ON w.sku = i.sku
     WHERE i.store_id = p_store ORDER BY i.sku FOR UPDATE OF i;

    SELECT jsonb_agg(jsonb_build_object('sku', w.sku, 'requested', w.qty,
                                        'available', i.on_hand - i.reserved) ORDER BY w.sku)
      INTO v_short
      FROM (SELECT l->>'sku' AS sku, sum((l->>'quantity')::bigint) AS qty
            FROM jsonb_array_elements(p->'lines') AS l GROUP BY 1) w JOIN inventory i ON i.store_id = p_store AND i.sku = w.sku
     WHERE i.on_hand - i.reserved < w.qty;
    IF v_short IS NOT NULL THEN
        RETURN jsonb_build_object('outcome', 'insufficient', 'skus', v_short);
    END IF;

    UPDATE inventory i SET reserved = i.reserved + w.qty, updated_at = now()
      FROM (SELECT l->>'sku' AS sku, sum((l->>'quantity')::bigint) AS qty
            FROM jsonb_array_elements(p->'lines') AS l GROUP BY 1) w WHERE i.store_id = p_store AND i.sku = w.sku;

    INSERT INTO store_counters AS c (store_id, last_order_number) VALUES (p_store, 1)
    ON CONFLICT (store_id) DO UPDATE SET last_order_number = c.last_order_number + 1
    RETURNING lpad(c.last_order_number::text, 6, '0') INTO v_number;

    INSERT INTO orders (store_id, id, order_number, status, payment_status, idempotency_key,
                        request_hash, card_mode, subtotal, tax, discount, total, change_due,
                        currency, register_id, customer_id, lease_owner, lease_until)
    VALUES (p_store, v_id, v_number, 'pending_payment', 'pending', p->>'idempotency_key',
            p->>'request_hash', p->>'card_mode', (p->>'subtotal')::bigint, (p->>'tax')::bigint,
            (p->>'discount')::bigint, (p->>'total')::bigint, (p->>'change_due')::bigint,
            p->>'currency', p->>'register_id', p->>'customer_id', p->>'lease_owner',
            now() + make_interval(secs => (p->>'lease_s')::double precision));

    INSERT INTO order_items (store_id, order_id, line_no, sku, quantity, unit_price, reserved)
    SELECT p_store, v_id, (t.ord - 1)::int, t.l->>'sku', (t.l->>'quantity')::int,
           (t.l->>'unit_price')::bigint,
           CASE WHEN EXISTS (SELECT 1 FROM inventory i WHERE i.store_id = p_store AND i.sku = t.l->>'sku')
                THEN (t.l->>'quantity')::int ELSE 0 END
      FROM jsonb_array_elements(p->'lines') WITH ORDINALITY AS t(l, ord);

    INSERT INTO payment_transactions (store_id, id, order_id, kind, tender_index, tender_type,
                                      operation, amount, tendered, status, reference_id,
                                      payment_processor_id, timeout_s, payment_type)
    SELECT p_store, (t.x->>'id')::uuid, v_id, 'payment', (t.ord - 1)::int, t.x->>'type',
           t.x->>'operation', (t.x->>'amount')::bigint, (t.x->>'tendered')::bigint, 'pending',
           t.x->>'reference_id', t.x->>'terminal_id', (t.x->>'timeout_s')::int, t.x->>'payment_type'
      FROM jsonb_array_elements(p->'tenders') WITH ORDINALITY AS t(x, ord);

    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.prepared', v_id,
            jsonb_build_object('idempotency_key', p->>'idempotency_key', 'total', p->'total',
                               'tenders', jsonb_array_length(p->'tenders')));
    RETURN jsonb_build_object('outcome', 'created', 'id', v_id, 'order_number', v_number);
END;
$$;

-- Replacing a function drops the search_path sql/008 gave it: set it again (its grants stay).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION gw_prepare_checkout(text, jsonb) SET search_path = %I, pg_temp', current_schema());
END;
$$;
