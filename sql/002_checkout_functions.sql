-- Server-side functions for the checkout's database phases: each phase is one round trip and
-- one transaction. The coordinator (gatewayd/checkout) calls them through gatewayd/store.

-- Prepare: the durable intent. Returns {"outcome": "created" | "exists" | "insufficient", ...}.
-- Inventory rows are locked in SKU order so that racing checkouts never deadlock; SKUs with no
-- inventory row are untracked items (services, gift wrap) and need no stock.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
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

    INSERT INTO order_items (store_id, order_id, line_no, sku, quantity, unit_price)
    SELECT p_store, v_id, (t.ord - 1)::int, t.l->>'sku', (t.l->>'quantity')::int,
           (t.l->>'unit_price')::bigint
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

-- Commit: every payment tender approved for its full amount -> the order is completed, the
-- reservation becomes a deduction, loyalty points and the register session are credited.
-- Returns {"outcome": "completed" | "already" | "not_ready" | "not_committable", ...}.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
CREATE OR REPLACE FUNCTION gw_commit_checkout(p_store text, p_order uuid, p_points_per_unit bigint,
                                              p_minor_per_unit bigint) RETURNS jsonb
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
      FROM (SELECT sku, sum(quantity)::bigint AS qty FROM order_items
             WHERE store_id = p_store AND order_id = p_order GROUP BY sku) w
     WHERE i.store_id = p_store AND i.sku = w.sku;

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

-- Fail: no tender may still be charged or in doubt (the coordinator voids and resolves first).
-- The reservation is released; cash goes back to the customer; unsent card tenders end 'failed'.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
CREATE OR REPLACE FUNCTION gw_fail_checkout(p_store text, p_order uuid, p_code text, p_reason text,
                                            p_status text DEFAULT 'payment_failed') RETURNS jsonb
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
    IF EXISTS (SELECT 1 FROM payment_transactions
                WHERE store_id = p_store AND order_id = p_order AND kind = 'payment'
                  AND tender_type = 'card' AND status IN ('processing', 'unknown', 'approved')) THEN
        RETURN jsonb_build_object('outcome', 'not_ready', 'status', o.status);
    END IF;

    UPDATE payment_transactions
       SET status = CASE WHEN tender_type = 'cash' THEN 'voided' ELSE 'failed' END,
           resolved_at = now(), updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND status = 'pending';

    UPDATE inventory i SET reserved = i.reserved - w.qty, updated_at = now()
      FROM (SELECT sku, sum(quantity)::bigint AS qty FROM order_items
             WHERE store_id = p_store AND order_id = p_order GROUP BY sku) w
     WHERE i.store_id = p_store AND i.sku = w.sku;

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

-- The guide's daily reconciliation: approved card charges whose order is not completed.
CREATE OR REPLACE FUNCTION find_orphaned_payments(p_store text DEFAULT NULL)
RETURNS TABLE (store_id text, transaction_id uuid, order_id uuid, order_number text,
               order_status text, reference_id text, terminal_id text, amount bigint,
               approved_amount bigint, created_at timestamptz, age interval)
LANGUAGE sql STABLE AS $$
    SELECT pt.store_id, pt.id, pt.order_id, o.order_number, o.status, pt.reference_id,
           pt.payment_processor_id, pt.amount, pt.approved_amount, pt.created_at,
           now() - pt.created_at
      FROM payment_transactions pt
      JOIN orders o ON o.store_id = pt.store_id AND o.id = pt.order_id
     WHERE pt.kind = 'payment' AND pt.tender_type = 'card' AND pt.status = 'approved'
       AND o.status NOT IN ('completed', 'refunded', 'partially_refunded')
       AND (p_store IS NULL OR pt.store_id = p_store)
     ORDER BY pt.created_at;
$$;

-- Cancels pending_payment orders older than p_minutes and releases their reservations. Never
-- touches an order with a tender that might have charged (processing, unknown, approved):
-- those belong to recovery, which asks the terminal first.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
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
           AND (p_store IS NULL OR o.store_id = p_store)
           AND NOT EXISTS (SELECT 1 FROM payment_transactions pt
                            WHERE pt.store_id = o.store_id AND pt.order_id = o.id
                              AND pt.tender_type = 'card'
                              AND pt.status IN ('processing', 'unknown', 'approved'))
         ORDER BY o.created_at
         FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM gw_fail_checkout(v_order.store_id, v_order.id, 'stale_pending',
                                 'pending_payment for more than ' || p_minutes || ' minutes', 'cancelled');
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END;
$$;
