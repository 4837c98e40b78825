-- 007: what a POS and a store meet in their first hour.
--
-- * Order numbers count per store (store_counters), not across every store of the database.
-- * A store may refuse SKUs it does not keep stock of (the intent's 'untracked_skus').
-- * A refund may name the tender it goes back on (tender_index); when the tender named, or no
--   single tender, has enough left, the refusal lists what each tender can still refund.
-- * A checkout that failed only because a terminal could not be reached (nothing was charged)
--   gives its idempotency key back: a retry with the same key, once the terminal is back, is a
--   new attempt (gw_retire_key). The failed order stays, as history, under retired_key.

CREATE TABLE IF NOT EXISTS store_counters (
    store_id           text   PRIMARY KEY,
    last_order_number  bigint NOT NULL
);

-- Stores that already have orders go on from their highest number.
INSERT INTO store_counters (store_id, last_order_number)
SELECT store_id, max(CASE WHEN order_number ~ '^[0-9]+$' THEN order_number::bigint ELSE 0 END)
  FROM orders GROUP BY store_id
ON CONFLICT (store_id) DO NOTHING;

ALTER TABLE orders ADD COLUMN IF NOT EXISTS retired_key text;
CREATE INDEX IF NOT EXISTS orders_retired_key ON orders (store_id, retired_key) WHERE retired_key IS NOT NULL;

-- Prepare: as in 006, numbered per store, and refusing untracked SKUs when the store says so.
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
                                      payment_processor_id, timeout_s)
    SELECT p_store, (t.x->>'id')::uuid, v_id, 'payment', (t.ord - 1)::int, t.x->>'type',
           t.x->>'operation', (t.x->>'amount')::bigint, (t.x->>'tendered')::bigint, 'pending',
           t.x->>'reference_id', t.x->>'terminal_id', (t.x->>'timeout_s')::int
      FROM jsonb_array_elements(p->'tenders') WITH ORDINALITY AS t(x, ord);

    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.prepared', v_id,
            jsonb_build_object('idempotency_key', p->>'idempotency_key', 'total', p->'total',
                               'tenders', jsonb_array_length(p->'tenders')));
    RETURN jsonb_build_object('outcome', 'created', 'id', v_id, 'order_number', v_number);
END;
$$;

-- Give the key of a checkout that failed because a terminal could not be reached back, so the
-- same key may start a new attempt. Only when nothing can have been charged: the order failed
-- with terminal_offline or terminal_busy, every card tender failed, and each one either never
-- left (sent_at NULL) or failed for that same reason (the state machine's definitive "not
-- reached"). Answers 'retired', 'conflict' (another request's key), 'gone' (already retired or
-- no such order) or 'final' (the failure stands: a decline, a charge, anything else).
CREATE OR REPLACE FUNCTION gw_retire_key(p_store text, p_order uuid, p_hash text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
BEGIN
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = p_order FOR UPDATE;
    IF NOT FOUND OR o.retired_key IS NOT NULL THEN
        RETURN 'gone';
    END IF;
    IF o.request_hash IS DISTINCT FROM p_hash THEN
        RETURN 'conflict';
    END IF;
    IF o.status <> 'payment_failed' OR o.failure_code NOT IN ('terminal_offline', 'terminal_busy')
       OR EXISTS (SELECT 1 FROM payment_transactions
                   WHERE store_id = p_store AND order_id = p_order AND tender_type = 'card'
                     AND (kind <> 'payment' OR status <> 'failed'
                          OR (sent_at IS NOT NULL
                              AND failure_code IS DISTINCT FROM 'terminal_offline'
                              AND failure_code IS DISTINCT FROM 'terminal_busy'))) THEN
        RETURN 'final';
    END IF;
    UPDATE orders SET retired_key = idempotency_key, idempotency_key = 'retired ' || id::text,
                      updated_at = now()
     WHERE store_id = p_store AND id = p_order;
    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.key_retired', p_order,
            jsonb_build_object('idempotency_key', o.idempotency_key, 'failure_code', o.failure_code));
    RETURN 'retired';
END;
$$;

-- Begin a refund: as in 006, on the tender the request names (tender_index) if it does, and a
-- refusal for want of room lists what each tender can still refund.
CREATE OR REPLACE FUNCTION gw_begin_refund(p_store text, p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o          orders%ROWTYPE;
    v_existing refunds%ROWTYPE;
    v_amount   bigint := (p->>'amount')::bigint;
    v_tender   record;
    v_taken    bigint;
    v_limit    bigint;
    v_orphan   boolean;
    v_bad      jsonb;
    v_left     jsonb;
    v_pick     record;
BEGIN
    SELECT * INTO v_existing FROM refunds WHERE store_id = p_store AND idempotency_key = p->>'idempotency_key';
    IF FOUND THEN
        IF v_existing.request_hash <> p->>'request_hash' OR v_existing.order_id <> (p->>'order_id')::uuid THEN
            RETURN jsonb_build_object('outcome', 'conflict');
        END IF;
        RETURN jsonb_build_object('outcome', 'exists', 'refund_id', v_existing.id);
    END IF;
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = (p->>'order_id')::uuid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found');
    END IF;
    v_orphan := o.status IN ('payment_failed', 'cancelled', 'voided');
    IF o.status NOT IN ('completed', 'partially_refunded') AND NOT v_orphan THEN
        RETURN jsonb_build_object('outcome', 'not_refundable', 'status', o.status);
    END IF;
    IF EXISTS (SELECT 1 FROM payment_transactions WHERE store_id = p_store AND order_id = o.id
                  AND kind = 'payment' AND status = 'approved' AND void_requested_at IS NOT NULL
                  AND settled_at IS NULL) THEN
        RETURN jsonb_build_object('outcome', 'void_pending');
    END IF;
    SELECT coalesce(sum(amount), 0) INTO v_taken FROM refunds
     WHERE store_id = p_store AND order_id = o.id AND status IN ('pending', 'completed');
    IF v_orphan THEN
        -- money received: a settled sale or capture; an uncaptured hold that lapsed is not money
        -- (a charge refunded in full already counts: its refunds are in v_taken)
        SELECT coalesce(sum(approved_amount), 0) INTO v_limit FROM payment_transactions
         WHERE store_id = p_store AND order_id = o.id AND kind = 'payment' AND tender_type = 'card'
           AND status IN ('approved', 'refunded') AND settled_at IS NOT NULL
           AND NOT (operation = 'auth' AND capture_status IS DISTINCT FROM 'captured');
        IF v_limit = 0 THEN
            RETURN jsonb_build_object('outcome', 'not_refundable', 'status', o.status);
        END IF;
        IF p->'lines' IS NOT NULL AND jsonb_typeof(p->'lines') = 'array' AND jsonb_array_length(p->'lines') > 0 THEN
            RETURN jsonb_build_object('outcome', 'bad_lines', 'reason', 'nothing of this order left the shelf');
        END IF;
    ELSE
        v_limit := o.total;
    END IF;
    IF v_taken + v_amount > v_limit THEN
        RETURN jsonb_build_object('outcome', 'over_limit', 'refundable', v_limit - v_taken);
    END IF;
    -- Restock: a refund of everything that is left puts back every line; a partial one only the
    -- lines it names, each at most what is left of it on the order.
    IF (p->>'restock')::boolean AND NOT v_orphan THEN
        IF p->'lines' IS NULL OR jsonb_typeof(p->'lines') <> 'array' OR jsonb_array_length(p->'lines') = 0 THEN
            IF v_taken + v_amount < v_limit THEN
                RETURN jsonb_build_object('outcome', 'bad_lines',
                                          'reason', 'a partial refund with restock names the lines it puts back');
            END IF;
        ELSE
            SELECT jsonb_agg(w.sku) INTO v_bad
              FROM (SELECT l->>'sku' AS sku, sum((l->>'quantity')::bigint) AS qty
                      FROM jsonb_array_elements(p->'lines') AS l GROUP BY 1) w
              LEFT JOIN (SELECT sku, sum(quantity - restocked)::bigint AS left_qty FROM order_items
                          WHERE store_id = p_store AND order_id = o.id GROUP BY sku) i ON i.sku = w.sku
             WHERE i.sku IS NULL OR w.qty > i.left_qty;
            IF v_bad IS NOT NULL THEN
                RETURN jsonb_build_object('outcome', 'bad_lines',
                                          'reason', 'more than is left on the order for ' || v_bad::text);
            END IF;
        END IF;
    END IF;
    -- What each tender can still refund (money received, less its refunds under way or done).
    SELECT coalesce(jsonb_agg(jsonb_build_object('tender_index', x.tender_index, 'type', x.tender_type,
                                                 'refundable', x.refundable) ORDER BY x.tender_index), '[]')
      INTO v_left
      FROM (SELECT t.tender_index, t.tender_type,
                   greatest(coalesce(t.approved_amount, t.amount) - coalesce((
                       SELECT sum(r.amount) FROM payment_transactions r
                        WHERE r.store_id = p_store AND r.order_id = o.id AND r.kind = 'refund'
                          AND r.tender_index = t.tender_index
                          AND r.status IN ('pending', 'processing', 'unknown', 'approved')), 0), 0) AS refundable
              FROM payment_transactions t
             WHERE t.store_id = p_store AND t.order_id = o.id AND t.kind = 'payment' AND t.status = 'approved'
               -- money received only: never an authorization not captured (a hold is not money)
               AND NOT (t.operation = 'auth' AND t.capture_status IS DISTINCT FROM 'captured')
               AND (NOT v_orphan OR (t.tender_type = 'card' AND t.settled_at IS NOT NULL))) x;
    -- The tender to refund on: the one the POS named, else a card with enough left first, else
    -- the cash. An orphan: its settled charge.
    SELECT (e->>'tender_index')::int AS tender_index, e->>'type' AS tender_type
      INTO v_pick
      FROM jsonb_array_elements(v_left) AS e
     WHERE (e->>'refundable')::bigint >= v_amount
       AND (p->>'tender_index' IS NULL OR (e->>'tender_index')::int = (p->>'tender_index')::int)
     ORDER BY (e->>'type' = 'card') DESC, (e->>'tender_index')::int
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'over_limit', 'refundable', v_limit - v_taken, 'tenders', v_left,
                                  'reason', CASE WHEN p->>'tender_index' IS NULL
                                                 THEN 'no single tender has that much left to refund'
                                                 ELSE 'tender ' || (p->>'tender_index') || ' has not that much left to refund' END);
    END IF;
    SELECT t.tender_type, t.payment_processor_id, t.tender_index
      INTO v_tender
      FROM payment_transactions t
     WHERE t.store_id = p_store AND t.order_id = o.id AND t.kind = 'payment' AND t.tender_index = v_pick.tender_index;
    INSERT INTO refunds (store_id, id, order_id, idempotency_key, request_hash, amount, restock, restock_lines)
    VALUES (p_store, (p->>'refund_id')::uuid, o.id, p->>'idempotency_key', p->>'request_hash', v_amount,
            (p->>'restock')::boolean AND NOT v_orphan,
            CASE WHEN jsonb_typeof(p->'lines') = 'array' AND jsonb_array_length(p->'lines') > 0
                 THEN p->'lines' END);
    INSERT INTO payment_transactions (store_id, id, order_id, kind, refund_id, tender_index, tender_type,
                                      operation, amount, status, reference_id, payment_processor_id, timeout_s)
    VALUES (p_store, (p->>'transaction_id')::uuid, o.id, 'refund', (p->>'refund_id')::uuid,
            v_tender.tender_index, v_tender.tender_type,
            CASE WHEN v_tender.tender_type = 'card' THEN 'return' ELSE 'cash' END, v_amount, 'pending',
            p->>'reference_id', v_tender.payment_processor_id, (p->>'timeout_s')::int);
    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'refund.requested', o.id, jsonb_build_object('amount', v_amount, 'refund_id', p->>'refund_id'));
    RETURN jsonb_build_object('outcome', 'created', 'refund_id', p->>'refund_id');
END;
$$;
