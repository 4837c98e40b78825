-- The checkout state machine's guards (gatewayd/checkout/machine.py decides; these functions refuse
-- any step that does not fit the stored state, and the daemon counts each refusal as an error).
--
--   * settled_at: a charge we know was approved whose Void (or Capture) the terminal answered "not
--     found" because its batch was closed. The money stays with the merchant: the tender stays
--     'approved' and now needs a Return, never a Void; it stays an orphan until refunded.
--   * order_items.reserved: what each line really reserved at prepare. A SKU whose inventory row
--     appears while a card is read was never reserved, so the commit must not release it.
--   * refunds.restock_lines: which lines a partial refund with restock puts back.
--   * Leases fence every write of an order's state: a daemon whose lease ran out (or was taken by
--     another) is refused ('lease_lost') and stops driving that order. All on the database clock.

ALTER TABLE payment_transactions ADD COLUMN IF NOT EXISTS settled_at timestamptz;
-- Why a tender ended without charging, as the API error code the POS is given (card_declined,
-- terminal_offline, ...): decided where the answer was read, never inferred from a terminal code.
ALTER TABLE payment_transactions ADD COLUMN IF NOT EXISTS failure_code text;
ALTER TABLE order_items ADD COLUMN IF NOT EXISTS reserved integer CHECK (reserved >= 0);
ALTER TABLE refunds ADD COLUMN IF NOT EXISTS restock_lines jsonb;

-- True while p_owner holds the order's lease (NULL owner: an operator or maintenance path that
-- takes no lease, allowed only where the caller says so).
CREATE OR REPLACE FUNCTION gw_lease_held(p_store text, p_order uuid, p_owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM orders WHERE store_id = p_store AND id = p_order
                      AND lease_owner = p_owner AND lease_until > now());
$$;

-- Take (or renew) an order's lease: free, expired, or already ours. Any status: reversals of
-- completed orders are leased too, so that a capture, a void and a refund of one order never
-- run in two daemons at once. Returns true, false (another daemon holds it), or NULL (no order).
CREATE OR REPLACE FUNCTION gw_take_lease(p_store text, p_order uuid, p_owner text, p_lease_s double precision)
RETURNS boolean
LANGUAGE sql AS $$
    WITH o AS (
        UPDATE orders SET lease_owner = p_owner, lease_until = now() + make_interval(secs => p_lease_s)
         WHERE store_id = p_store AND id = p_order
           AND (lease_until IS NULL OR lease_until <= now() OR lease_owner = p_owner)
        RETURNING 1)
    SELECT CASE WHEN EXISTS (SELECT 1 FROM o) THEN true
                WHEN EXISTS (SELECT 1 FROM orders WHERE store_id = p_store AND id = p_order) THEN false
           END;
$$;

-- Prepare: as in 002, and each line records what it reserved.
CREATE OR REPLACE FUNCTION gw_prepare_checkout(p_store text, p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_id       uuid := (p->>'id')::uuid;
    v_existing record;
    v_short    jsonb;
    v_number   text;
BEGIN
    SELECT id, request_hash INTO v_existing
      FROM orders WHERE store_id = p_store AND idempotency_key = p->>'idempotency_key';
    IF FOUND THEN
        RETURN jsonb_build_object('outcome', 'exists', 'id', v_existing.id,
                                  'request_hash', v_existing.request_hash);
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

    v_number := lpad(nextval('order_number_seq')::text, 6, '0');
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

-- Commit, fenced by the lease: only the lease holder completes an order. Deducts exactly what
-- each line reserved (a line from before 006 has reserved NULL: it reserved its quantity).
CREATE OR REPLACE FUNCTION gw_commit_checkout(p_store text, p_order uuid, p_points_per_unit bigint,
                                              p_minor_per_unit bigint, p_owner text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o         orders%ROWTYPE;
    v_points  bigint := 0;
    v_session uuid;
    v_cash    bigint;
    v_card    bigint;
    v_capture boolean;
BEGIN
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = p_order FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found');
    END IF;
    IF o.status IN ('completed', 'refunded', 'partially_refunded', 'voided') THEN
        RETURN jsonb_build_object('outcome', 'already', 'status', o.status);
    END IF;
    IF o.status NOT IN ('pending_payment', 'payment_processing', 'payment_authorized') THEN
        RETURN jsonb_build_object('outcome', 'not_committable', 'status', o.status);
    END IF;
    IF p_owner IS NOT NULL AND (o.lease_owner IS DISTINCT FROM p_owner OR o.lease_until <= now()) THEN
        RETURN jsonb_build_object('outcome', 'lease_lost', 'status', o.status);
    END IF;
    IF EXISTS (SELECT 1 FROM payment_transactions
                WHERE store_id = p_store AND order_id = p_order AND kind = 'payment'
                  AND tender_type = 'card'
                  AND (status <> 'approved' OR approved_amount IS DISTINCT FROM amount)) THEN
        RETURN jsonb_build_object('outcome', 'not_ready', 'status', o.status);
    END IF;

    UPDATE payment_transactions
       SET status = 'approved', approved_amount = amount, resolved_at = now(), updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND tender_type = 'cash';

    UPDATE inventory i SET on_hand = i.on_hand - w.qty, reserved = i.reserved - w.qty, updated_at = now()
      FROM (SELECT sku, sum(coalesce(reserved, quantity))::bigint AS qty FROM order_items
             WHERE store_id = p_store AND order_id = p_order GROUP BY sku) w
     WHERE i.store_id = p_store AND i.sku = w.sku AND w.qty > 0;

    IF o.customer_id IS NOT NULL THEN
        v_points := (o.total * p_points_per_unit) / p_minor_per_unit;
    END IF;
    IF v_points > 0 THEN
        INSERT INTO loyalty_accounts (store_id, customer_id, points) VALUES (p_store, o.customer_id, v_points)
        ON CONFLICT (store_id, customer_id)
        DO UPDATE SET points = loyalty_accounts.points + EXCLUDED.points, updated_at = now();
        INSERT INTO loyalty_ledger (store_id, customer_id, order_id, points, reason)
        VALUES (p_store, o.customer_id, p_order, v_points, 'earn');
    END IF;

    IF o.register_id IS NOT NULL THEN
        SELECT coalesce(sum(amount) FILTER (WHERE tender_type = 'cash'), 0),
               coalesce(sum(amount) FILTER (WHERE tender_type = 'card'), 0)
          INTO v_cash, v_card
          FROM payment_transactions WHERE store_id = p_store AND order_id = p_order AND kind = 'payment';
        INSERT INTO register_sessions (store_id, id, register_id)
        VALUES (p_store, gen_random_uuid(), o.register_id)
        ON CONFLICT (store_id, register_id) WHERE status = 'open' DO NOTHING;
        UPDATE register_sessions
           SET cash_total = cash_total + v_cash, card_total = card_total + v_card,
               checkout_count = checkout_count + 1
         WHERE store_id = p_store AND register_id = o.register_id AND status = 'open'
        RETURNING id INTO v_session;
    END IF;

    UPDATE payment_transactions SET capture_status = 'pending', updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND operation = 'auth'
       AND capture_status IS NULL;
    v_capture := FOUND;

    UPDATE orders
       SET status = 'completed', payment_status = CASE WHEN v_capture THEN 'authorized' ELSE 'paid' END,
           loyalty_points = v_points, register_session_id = v_session,
           lease_owner = NULL, lease_until = NULL, completed_at = now(), updated_at = now()
     WHERE store_id = p_store AND id = p_order;

    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.completed', p_order,
            jsonb_build_object('total', o.total, 'loyalty_points', v_points,
                               'register_session_id', v_session));
    RETURN jsonb_build_object('outcome', 'completed', 'status', 'completed');
END;
$$;

-- The old signature (callers from before 006): no lease check.
CREATE OR REPLACE FUNCTION gw_commit_checkout(p_store text, p_order uuid, p_points_per_unit bigint,
                                              p_minor_per_unit bigint) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT gw_commit_checkout(p_store, p_order, p_points_per_unit, p_minor_per_unit, NULL::text);
$$;

-- Fail, fenced by the lease (NULL owner: maintenance, which only fails orders nothing charged).
-- No tender may still be in doubt, and an approved charge may stand only once its batch has
-- settled (settled_at): it cannot be voided any more, needs a Return, and stays an orphan.
CREATE OR REPLACE FUNCTION gw_fail_checkout(p_store text, p_order uuid, p_code text, p_reason text,
                                            p_status text, p_owner text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o orders%ROWTYPE;
BEGIN
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = p_order FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found');
    END IF;
    IF o.status IN ('payment_failed', 'cancelled') THEN
        RETURN jsonb_build_object('outcome', 'already', 'status', o.status);
    END IF;
    IF o.status NOT IN ('pending_payment', 'payment_processing', 'payment_authorized') THEN
        RETURN jsonb_build_object('outcome', 'not_failable', 'status', o.status);
    END IF;
    IF p_owner IS NOT NULL AND (o.lease_owner IS DISTINCT FROM p_owner OR o.lease_until <= now()) THEN
        RETURN jsonb_build_object('outcome', 'lease_lost', 'status', o.status);
    END IF;
    IF EXISTS (SELECT 1 FROM payment_transactions
                WHERE store_id = p_store AND order_id = p_order AND kind = 'payment'
                  AND tender_type = 'card'
                  AND (status IN ('processing', 'unknown') OR (status = 'approved' AND settled_at IS NULL))) THEN
        RETURN jsonb_build_object('outcome', 'not_ready', 'status', o.status);
    END IF;

    UPDATE payment_transactions
       SET status = CASE WHEN tender_type = 'cash' THEN 'voided' ELSE 'failed' END,
           resolved_at = now(), updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND status = 'pending';

    UPDATE inventory i SET reserved = i.reserved - w.qty, updated_at = now()
      FROM (SELECT sku, sum(coalesce(reserved, quantity))::bigint AS qty FROM order_items
             WHERE store_id = p_store AND order_id = p_order GROUP BY sku) w
     WHERE i.store_id = p_store AND i.sku = w.sku AND w.qty > 0;

    UPDATE orders
       SET status = p_status,
           payment_status = CASE WHEN EXISTS (
                   SELECT 1 FROM payment_transactions WHERE store_id = p_store AND order_id = p_order
                      AND tender_type = 'card' AND status = 'voided') THEN 'voided' ELSE 'failed' END,
           failure_code = p_code, failure_reason = p_reason, failed_at = now(), updated_at = now(),
           lease_owner = NULL, lease_until = NULL
     WHERE store_id = p_store AND id = p_order;

    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.' || p_status, p_order,
            jsonb_build_object('code', p_code, 'reason', p_reason));
    RETURN jsonb_build_object('outcome', p_status, 'status', p_status);
END;
$$;

CREATE OR REPLACE FUNCTION gw_fail_checkout(p_store text, p_order uuid, p_code text, p_reason text,
                                            p_status text DEFAULT 'payment_failed') RETURNS jsonb
LANGUAGE sql AS $$
    SELECT gw_fail_checkout(p_store, p_order, p_code, p_reason, p_status, NULL::text);
$$;

-- Stale pending orders: never one a live daemon holds the lease of (it may be about to charge).
CREATE OR REPLACE FUNCTION cleanup_stale_pending_orders(p_minutes integer, p_store text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_order record;
    v_count integer := 0;
BEGIN
    FOR v_order IN
        SELECT o.store_id, o.id FROM orders o
         WHERE o.status = 'pending_payment'
           AND o.created_at < now() - make_interval(mins => p_minutes)
           AND (o.lease_until IS NULL OR o.lease_until <= now())
           AND (p_store IS NULL OR o.store_id = p_store)
           AND NOT EXISTS (SELECT 1 FROM payment_transactions pt
                            WHERE pt.store_id = o.store_id AND pt.order_id = o.id
                              AND pt.tender_type = 'card'
                              AND pt.status IN ('processing', 'unknown', 'approved'))
         ORDER BY o.created_at
         FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM gw_fail_checkout(v_order.store_id, v_order.id, 'stale_pending',
                                 'pending_payment for more than ' || p_minutes || ' minutes', 'cancelled',
                                 NULL::text);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;

-- Void: every card tender voided, never charged, or standing in a settled batch (it can no longer
-- be voided: it stays approved and is an orphan to refund). Takes back exactly what the commit
-- deducted.
CREATE OR REPLACE FUNCTION gw_void_checkout(p_store text, p_order uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o       orders%ROWTYPE;
    v_cash  bigint;
    v_card  bigint;
BEGIN
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = p_order FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found');
    END IF;
    IF o.status = 'voided' THEN
        RETURN jsonb_build_object('outcome', 'already');
    END IF;
    IF o.status <> 'completed' OR o.refunded_amount > 0 THEN
        RETURN jsonb_build_object('outcome', 'not_voidable', 'status', o.status);
    END IF;
    IF EXISTS (SELECT 1 FROM payment_transactions WHERE store_id = p_store AND order_id = p_order
                AND kind = 'payment' AND tender_type = 'card' AND status NOT IN ('voided', 'failed')
                AND NOT (status = 'approved' AND settled_at IS NOT NULL)) THEN
        RETURN jsonb_build_object('outcome', 'not_ready');
    END IF;

    SELECT coalesce(sum(amount) FILTER (WHERE tender_type = 'cash'), 0),
           coalesce(sum(amount) FILTER (WHERE tender_type = 'card'), 0)
      INTO v_cash, v_card
      FROM payment_transactions WHERE store_id = p_store AND order_id = p_order AND kind = 'payment';
    UPDATE payment_transactions SET status = 'voided', updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND tender_type = 'cash';

    PERFORM gw_restock(p_store, p_order, NULL);

    IF o.customer_id IS NOT NULL AND o.loyalty_points > 0 THEN
        UPDATE loyalty_accounts SET points = points - o.loyalty_points, updated_at = now()
         WHERE store_id = p_store AND customer_id = o.customer_id;
        INSERT INTO loyalty_ledger (store_id, customer_id, order_id, points, reason)
        VALUES (p_store, o.customer_id, p_order, -o.loyalty_points, 'void');
    END IF;

    IF o.register_session_id IS NOT NULL THEN
        UPDATE register_sessions
           SET cash_total = cash_total - v_cash, card_total = card_total - v_card,
               checkout_count = checkout_count - 1
         WHERE store_id = p_store AND id = o.register_session_id;
    END IF;

    UPDATE orders SET status = 'voided', payment_status = 'voided', lease_owner = NULL, lease_until = NULL,
                      updated_at = now()
     WHERE store_id = p_store AND id = p_order;
    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.voided', p_order, jsonb_build_object('total', o.total));
    RETURN jsonb_build_object('outcome', 'voided');
END;
$$;

-- Begin a refund. A completed order: up to what is left of one tender. An order that did not
-- complete (or was voided) but kept a settled charge (an orphan that can no longer be voided): a
-- Return of that charge. With restock, a partial refund names the lines it puts back (p->'lines').
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
    -- The tender to refund on: a card with enough left first, else the cash. An orphan: its
    -- settled charge.
    SELECT t.tender_type, t.payment_processor_id, t.tender_index
      INTO v_tender
      FROM payment_transactions t
     WHERE t.store_id = p_store AND t.order_id = o.id AND t.kind = 'payment' AND t.status = 'approved'
       -- money received only: never an authorization not captured (a hold is not money)
       AND NOT (t.operation = 'auth' AND t.capture_status IS DISTINCT FROM 'captured')
       AND (NOT v_orphan OR (t.tender_type = 'card' AND t.settled_at IS NOT NULL))
       AND coalesce(t.approved_amount, t.amount) - coalesce((
               SELECT sum(r.amount) FROM payment_transactions r
                WHERE r.store_id = p_store AND r.order_id = o.id AND r.kind = 'refund'
                  AND r.tender_index = t.tender_index AND r.status IN ('pending', 'processing', 'unknown', 'approved')), 0)
           >= v_amount
     ORDER BY (t.tender_type = 'card') DESC, t.tender_index
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'over_limit', 'refundable', v_limit - v_taken,
                                  'reason', 'no single tender has that much left to refund');
    END IF;
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

-- Finish a refund. A completed order: totals, restock (every line, or the lines the refund
-- names), loyalty points in proportion, the register session. An orphan's refund: the settled
-- charge it returned is marked refunded once returned in full; the order itself is untouched.
CREATE OR REPLACE FUNCTION gw_finish_refund(p_store text, p_refund uuid, p_ok boolean, p_reason text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r        refunds%ROWTYPE;
    o        orders%ROWTYPE;
    v_before bigint;
    v_after  bigint;
    v_points bigint;
    v_index  integer;
BEGIN
    SELECT * INTO r FROM refunds WHERE store_id = p_store AND id = p_refund FOR UPDATE;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'not_found');
    END IF;
    IF r.status <> 'pending' THEN
        RETURN jsonb_build_object('outcome', 'already', 'status', r.status);
    END IF;
    IF NOT p_ok THEN
        UPDATE refunds SET status = 'failed', failure_reason = p_reason WHERE store_id = p_store AND id = p_refund;
        UPDATE payment_transactions SET status = 'failed', updated_at = now()
         WHERE store_id = p_store AND refund_id = p_refund AND status IN ('pending');
        INSERT INTO audit_events (store_id, kind, order_id, detail)
        VALUES (p_store, 'refund.failed', r.order_id, jsonb_build_object('refund_id', p_refund, 'reason', p_reason));
        RETURN jsonb_build_object('outcome', 'failed');
    END IF;
    SELECT * INTO o FROM orders WHERE store_id = p_store AND id = r.order_id FOR UPDATE;
    UPDATE payment_transactions SET status = 'approved', approved_amount = amount, updated_at = now()
     WHERE store_id = p_store AND refund_id = p_refund AND tender_type = 'cash';

    IF o.status IN ('payment_failed', 'cancelled', 'voided') THEN
        SELECT tender_index INTO v_index FROM payment_transactions
         WHERE store_id = p_store AND refund_id = p_refund;
        UPDATE payment_transactions t SET status = 'refunded', updated_at = now()
         WHERE t.store_id = p_store AND t.order_id = o.id AND t.kind = 'payment' AND t.tender_index = v_index
           AND t.status = 'approved'
           AND coalesce(t.approved_amount, t.amount) <= r.amount + coalesce((
                   SELECT sum(x.amount) FROM refunds x WHERE x.store_id = p_store AND x.order_id = o.id
                      AND x.status = 'completed'
                      AND EXISTS (SELECT 1 FROM payment_transactions y WHERE y.store_id = p_store
                                     AND y.refund_id = x.id AND y.tender_index = v_index)), 0);
        UPDATE refunds SET status = 'completed', completed_at = now() WHERE store_id = p_store AND id = p_refund;
        INSERT INTO audit_events (store_id, kind, order_id, detail)
        VALUES (p_store, 'refund.completed', o.id,
                jsonb_build_object('refund_id', p_refund, 'amount', r.amount, 'orphan', true));
        RETURN jsonb_build_object('outcome', 'completed');
    END IF;

    v_before := (o.loyalty_points * o.refunded_amount) / greatest(o.total, 1);
    v_after := (o.loyalty_points * (o.refunded_amount + r.amount)) / greatest(o.total, 1);
    v_points := v_after - v_before;
    IF o.customer_id IS NOT NULL AND v_points > 0 THEN
        UPDATE loyalty_accounts SET points = points - v_points, updated_at = now()
         WHERE store_id = p_store AND customer_id = o.customer_id;
        INSERT INTO loyalty_ledger (store_id, customer_id, order_id, points, reason)
        VALUES (p_store, o.customer_id, o.id, -v_points, 'refund');
    END IF;

    IF r.restock THEN
        PERFORM gw_restock(p_store, o.id, r.restock_lines);
    END IF;

    IF o.register_session_id IS NOT NULL THEN
        UPDATE register_sessions SET refund_total = refund_total + r.amount
         WHERE store_id = p_store AND id = o.register_session_id;
    END IF;

    UPDATE refunds SET status = 'completed', completed_at = now() WHERE store_id = p_store AND id = p_refund;
    UPDATE orders
       SET refunded_amount = refunded_amount + r.amount,
           status = CASE WHEN refunded_amount + r.amount >= total THEN 'refunded' ELSE 'partially_refunded' END,
           payment_status = CASE WHEN refunded_amount + r.amount >= total THEN 'refunded'
                                 ELSE 'partially_refunded' END,
           updated_at = now()
     WHERE store_id = p_store AND id = o.id;
    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'refund.completed', o.id,
            jsonb_build_object('refund_id', p_refund, 'amount', r.amount, 'loyalty_points', -v_points));
    RETURN jsonb_build_object('outcome', 'completed');
END;
$$;

-- Put goods of a completed order back on the shelf: every line (p_lines NULL) or the named
-- [{sku, quantity}]. Each line counts what it put back (restocked); only units that left the
-- shelf through this order (what the line reserved) go back into inventory.
CREATE OR REPLACE FUNCTION gw_restock(p_store text, p_order uuid, p_lines jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_left jsonb;
    v_item record;
    v_want bigint;
    v_put  bigint;
BEGIN
    IF p_lines IS NOT NULL THEN
        SELECT coalesce(jsonb_object_agg(sku, qty), '{}'::jsonb) INTO v_left
          FROM (SELECT l->>'sku' AS sku, sum((l->>'quantity')::bigint) AS qty
                  FROM jsonb_array_elements(p_lines) AS l GROUP BY 1) w;
    END IF;
    FOR v_item IN
        SELECT line_no, sku, quantity, restocked, coalesce(reserved, quantity) AS took FROM order_items
         WHERE store_id = p_store AND order_id = p_order ORDER BY line_no FOR UPDATE
    LOOP
        v_want := CASE WHEN p_lines IS NULL THEN v_item.quantity
                       ELSE coalesce((v_left->>v_item.sku)::bigint, 0) END;
        v_put := least(v_want, v_item.quantity - v_item.restocked);
        CONTINUE WHEN v_put <= 0;
        UPDATE order_items SET restocked = restocked + v_put
         WHERE store_id = p_store AND order_id = p_order AND line_no = v_item.line_no;
        UPDATE inventory SET on_hand = on_hand + greatest(least(v_put, v_item.took - v_item.restocked), 0),
                             updated_at = now()
         WHERE store_id = p_store AND sku = v_item.sku;
        IF p_lines IS NOT NULL THEN
            v_left := jsonb_set(v_left, ARRAY[v_item.sku], to_jsonb(v_want - v_put));
        END IF;
    END LOOP;
END;
$$;

-- One owner per terminal: a running daemon stamps the terminals it drives (renewed while it
-- runs); the operator CLI never drives a terminal whose owner is alive (it refuses, naming it).
ALTER TABLE payment_processors ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE payment_processors ADD COLUMN IF NOT EXISTS owner_until timestamptz;
