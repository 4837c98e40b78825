-- Voids and refunds of completed checkouts.

-- After every card tender of a completed order is voided at its terminal: the order is voided,
-- its goods go back on the shelf, loyalty points and register-session totals are taken back.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
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
                AND kind = 'payment' AND tender_type = 'card' AND status NOT IN ('voided', 'failed')) THEN
        RETURN jsonb_build_object('outcome', 'not_ready');
    END IF;

    SELECT coalesce(sum(amount) FILTER (WHERE tender_type = 'cash'), 0),
           coalesce(sum(amount) FILTER (WHERE tender_type = 'card'), 0)
      INTO v_cash, v_card
      FROM payment_transactions WHERE store_id = p_store AND order_id = p_order AND kind = 'payment';
    UPDATE payment_transactions SET status = 'voided', updated_at = now()
     WHERE store_id = p_store AND order_id = p_order AND kind = 'payment' AND tender_type = 'cash';

    UPDATE inventory i SET on_hand = i.on_hand + w.qty, updated_at = now()
      FROM (SELECT sku, sum(quantity - restocked)::bigint AS qty FROM order_items
             WHERE store_id = p_store AND order_id = p_order GROUP BY sku) w
     WHERE i.store_id = p_store AND i.sku = w.sku;
    UPDATE order_items SET restocked = quantity WHERE store_id = p_store AND order_id = p_order;

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

    UPDATE orders SET status = 'voided', payment_status = 'voided', updated_at = now()
     WHERE store_id = p_store AND id = p_order;
    INSERT INTO audit_events (store_id, kind, order_id, detail)
    VALUES (p_store, 'checkout.voided', p_order, jsonb_build_object('total', o.total));
    RETURN jsonb_build_object('outcome', 'voided');
END;
$$;

-- Begin a refund: idempotent by its own key; the amount must fit what is left to refund on one
-- tender (refunds still pending count as taken). Returns the refund transaction to send.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
CREATE OR REPLACE FUNCTION gw_begin_refund(p_store text, p jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    o          orders%ROWTYPE;
    v_existing refunds%ROWTYPE;
    v_amount   bigint := (p->>'amount')::bigint;
    v_tender   record;
    v_taken    bigint;
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
    IF o.status NOT IN ('completed', 'partially_refunded') THEN
        RETURN jsonb_build_object('outcome', 'not_refundable', 'status', o.status);
    END IF;
    SELECT coalesce(sum(amount), 0) INTO v_taken FROM refunds
     WHERE store_id = p_store AND order_id = o.id AND status IN ('pending', 'completed');
    IF v_taken + v_amount > o.total THEN
        RETURN jsonb_build_object('outcome', 'over_limit', 'refundable', o.total - v_taken);
    END IF;
    -- The tender to refund on: a card with enough left first, else the cash.
    SELECT t.tender_type, t.payment_processor_id, t.amount - coalesce((
               SELECT sum(r.amount) FROM payment_transactions r
                WHERE r.store_id = p_store AND r.order_id = o.id AND r.kind = 'refund'
                  AND r.tender_index = t.tender_index AND r.status IN ('pending', 'processing', 'unknown', 'approved')), 0)
               AS left_amount, t.tender_index
      INTO v_tender
      FROM payment_transactions t
     WHERE t.store_id = p_store AND t.order_id = o.id AND t.kind = 'payment' AND t.status = 'approved'
       AND t.amount - coalesce((
               SELECT sum(r.amount) FROM payment_transactions r
                WHERE r.store_id = p_store AND r.order_id = o.id AND r.kind = 'refund'
                  AND r.tender_index = t.tender_index AND r.status IN ('pending', 'processing', 'unknown', 'approved')), 0)
           >= v_amount
     ORDER BY (t.tender_type = 'card') DESC, t.tender_index
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('outcome', 'over_limit', 'refundable', o.total - v_taken,
                                  'reason', 'no single tender has that much left to refund');
    END IF;
    INSERT INTO refunds (store_id, id, order_id, idempotency_key, request_hash, amount, restock)
    VALUES (p_store, (p->>'refund_id')::uuid, o.id, p->>'idempotency_key', p->>'request_hash', v_amount,
            (p->>'restock')::boolean);
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

-- Finish a refund whose money moved (or, with p_ok false, that failed): order totals, restock,
-- loyalty points taken back in proportion (cumulatively exact), the register session.
-- Superseded: the definition in force is in 006_state_machine.sql (kept here as applied).
CREATE OR REPLACE FUNCTION gw_finish_refund(p_store text, p_refund uuid, p_ok boolean, p_reason text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    r        refunds%ROWTYPE;
    o        orders%ROWTYPE;
    v_before bigint;
    v_after  bigint;
    v_points bigint;
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
        UPDATE inventory i SET on_hand = i.on_hand + w.qty, updated_at = now()
          FROM (SELECT sku, sum(quantity - restocked)::bigint AS qty FROM order_items
                 WHERE store_id = p_store AND order_id = o.id GROUP BY sku) w
         WHERE i.store_id = p_store AND i.sku = w.sku;
        UPDATE order_items SET restocked = quantity WHERE store_id = p_store AND order_id = o.id;
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
