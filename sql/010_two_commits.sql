-- 010: a checkout at the cost of its two commits (issue 16).
--
-- A card checkout needs two durable commits: the intent before the terminal is asked, and the
-- answer with the order's completion after it. A cash checkout needs one. These functions do
-- exactly that, each in one statement, and answer with the order and its tenders as the tables'
-- own row types, so that the daemon reads nothing back and builds or parses no jsonb for itself
-- (the audit journal's details and the terminal's raw answer stay jsonb: they are data).
--
-- * gw_checkout_intent: the intent as gw_prepare_checkout (009) records it, from plain arrays,
--   and in the same transaction:
--     - the first card tender stamped sent when the daemon asks (p_stamp: its id): status
--       processing, sent_at now(), attempts 1, the order payment_processing: what the daemon's
--       "mark sent" writes. The daemon then sends that tender without a second stamp only while
--       it is within gatewayd.retry.SEND_MARGIN_S of the moment it asked for this one (its own
--       monotonic clock, read right before the request leaves), else it stamps it again first;
--       the not-found rule adds that margin (docs/decisions.md, "The intent stamps its first
--       card sent"). Recovery finds such a tender in doubt and asks the terminal, as for any
--       tender that may have left.
--     - a checkout without a card tender completed at once (gw_commit_checkout, p_points_per_unit
--       given): one commit for a cash sale.
-- * gw_record_tender_and: a terminal's answer stored, fenced by the order's lease (as the
--   daemon's own fenced UPDATE of payment_transactions does), then, in the same transaction and
--   only when the daemon's state machine says this answer decides the order, the order completed
--   (gw_commit_checkout) or failed (gw_fail_checkout). Those functions check everything again;
--   what they refuse, they refuse as before, and the answer stays stored (even when the schema
--   refuses the completion: it runs in a subtransaction of its own).

-- The metrics snapshot counts orphaned payments every 5 s (MaintenanceStore.orphan_count): from the
-- orders that are not completed (few: those in flight, and the ones that failed), not from every
-- approved charge in the database as find_orphaned_payments' join reads them.
CREATE INDEX IF NOT EXISTS orders_not_completed
    ON orders (store_id, id) WHERE status NOT IN ('completed', 'refunded', 'partially_refunded');

CREATE OR REPLACE FUNCTION gw_checkout_intent(
    p_store text, p_id uuid, p_key text, p_hash text, p_card_mode text, p_amounts bigint[],
    p_currency text, p_register text, p_customer text, p_untracked text, p_owner text,
    p_lease_s double precision,
    p_skus text[], p_quantities integer[], p_prices bigint[],
    p_tender_ids uuid[], p_tender_types text[], p_operations text[], p_tender_amounts bigint[],
    p_tendered bigint[], p_references text[], p_terminals text[], p_timeouts integer[],
    p_payment_types text[],
    p_stamp uuid, p_points_per_unit bigint, p_minor_per_unit bigint,
    OUT r_outcome text, OUT r_id uuid, OUT r_hash text, OUT r_skus jsonb, OUT r_committed text,
    OUT r_order orders, OUT r_tenders payment_transactions[], OUT r_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_number  text;
    v_cards   boolean := 'card' = ANY(p_tender_types);
BEGIN
    r_now := now();
    SELECT x.id, x.request_hash INTO r_id, r_hash
      FROM orders x WHERE x.store_id = p_store AND x.idempotency_key = p_key;
    IF FOUND THEN
        r_outcome := 'exists';
    ELSE
        IF coalesce(p_untracked, 'allow') = 'refuse' THEN
            SELECT jsonb_agg(DISTINCT l.sku) INTO r_skus
              FROM unnest(p_skus) AS l(sku)
             WHERE NOT EXISTS (SELECT 1 FROM inventory i WHERE i.store_id = p_store AND i.sku = l.sku);
            IF r_skus IS NOT NULL THEN
                r_outcome := 'untracked';
                RETURN;
            END IF;
        END IF;

        -- Inventory rows in SKU order, so that racing registers never deadlock.
        PERFORM 1 FROM inventory i WHERE i.store_id = p_store AND i.sku = ANY(p_skus) ORDER BY i.sku FOR UPDATE OF i;

        SELECT jsonb_agg(jsonb_build_object('sku', w.sku, 'requested', w.qty,
                                            'available', i.on_hand - i.reserved) ORDER BY w.sku)
          INTO r_skus
          FROM (SELECT l.sku, sum(l.q)::bigint AS qty FROM unnest(p_skus, p_quantities) AS l(sku, q) GROUP BY 1) w
          JOIN inventory i ON i.store_id = p_store AND i.sku = w.sku
         WHERE i.on_hand - i.reserved < w.qty;
        IF r_skus IS NOT NULL THEN
            r_outcome := 'insufficient';
            RETURN;
        END IF;

        UPDATE inventory i SET reserved = i.reserved + w.qty, updated_at = now()
          FROM (SELECT l.sku, sum(l.q)::bigint AS qty FROM unnest(p_skus, p_quantities) AS l(sku, q) GROUP BY 1) w
         WHERE i.store_id = p_store AND i.sku = w.sku;

        INSERT INTO store_counters AS c (store_id, last_order_number) VALUES (p_store, 1)
        ON CONFLICT (store_id) DO UPDATE SET last_order_number = c.last_order_number + 1
        RETURNING lpad(c.last_order_number::text, 6, '0') INTO v_number;

        INSERT INTO orders (store_id, id, order_number, status, payment_status, idempotency_key,
                            request_hash, card_mode, subtotal, tax, discount, total, change_due,
                            currency, register_id, customer_id, lease_owner, lease_until)
        VALUES (p_store, p_id, v_number,
                CASE WHEN p_stamp IS NULL THEN 'pending_payment' ELSE 'payment_processing' END,
                CASE WHEN p_stamp IS NULL THEN 'pending' ELSE 'processing' END,
                p_key, p_hash, p_card_mode, p_amounts[1], p_amounts[2], p_amounts[3], p_amounts[4],
                p_amounts[5], p_currency, p_register, p_customer, p_owner,
                now() + make_interval(secs => p_lease_s));

        INSERT INTO order_items (store_id, order_id, line_no, sku, quantity, unit_price, reserved)
        SELECT p_store, p_id, (l.ord - 1)::int, l.sku, l.q, l.price,
               CASE WHEN EXISTS (SELECT 1 FROM inventory i WHERE i.store_id = p_store AND i.sku = l.sku)
                    THEN l.q ELSE 0 END
          FROM unnest(p_skus, p_quantities, p_prices) WITH ORDINALITY AS l(sku, q, price, ord);

        INSERT INTO payment_transactions (store_id, id, order_id, kind, tender_index, tender_type,
                                          operation, amount, tendered, status, reference_id,
                                          payment_processor_id, timeout_s, payment_type, sent_at, attempts)
        SELECT p_store, t.tid, p_id, 'payment', (t.ord - 1)::int, t.typ, t.op, t.amount, t.tendered,
               CASE WHEN t.tid = p_stamp AND t.typ = 'card' THEN 'processing' ELSE 'pending' END,
               t.ref, t.terminal, t.timeout, t.ptype,
               CASE WHEN t.tid = p_stamp AND t.typ = 'card' THEN now() END,
               CASE WHEN t.tid = p_stamp AND t.typ = 'card' THEN 1 ELSE 0 END
          FROM unnest(p_tender_ids, p_tender_types, p_operations, p_tender_amounts, p_tendered,
                      p_references, p_terminals, p_timeouts, p_payment_types)
               WITH ORDINALITY AS t(tid, typ, op, amount, tendered, ref, terminal, timeout, ptype, ord);

        INSERT INTO audit_events (store_id, kind, order_id, detail)
        VALUES (p_store, 'checkout.prepared', p_id,
                jsonb_build_object('idempotency_key', p_key, 'total', p_amounts[4],
                                   'tenders', cardinality(p_tender_ids)));
        r_outcome := 'created';
        r_id := p_id;
        r_hash := p_hash;

        IF NOT v_cards AND p_points_per_unit IS NOT NULL THEN
            r_committed := gw_commit_checkout(p_store, p_id, p_points_per_unit, p_minor_per_unit, p_owner)->>'outcome';
        END IF;
    END IF;

    SELECT * INTO r_order FROM orders x WHERE x.store_id = p_store AND x.id = r_id;
    SELECT coalesce(array_agg(t ORDER BY t.kind, t.tender_index, t.created_at), '{}') INTO r_tenders
      FROM payment_transactions t WHERE t.store_id = p_store AND t.order_id = r_id;
END;
$$;

CREATE OR REPLACE FUNCTION gw_record_tender_and(
    p_store text, p_tender uuid, p_owner text, p_status text, p_from text[],
    p_approved_amount bigint, p_auth_code text, p_card_brand text, p_last4 text, p_batch_number text,
    p_transaction_number text, p_status_code text, p_raw jsonb, p_last_error text, p_audit jsonb,
    p_failure_code text, p_payment_type text, p_entry_method text, p_application_label text,
    p_aid text, p_host_reference text, p_receipt_customer text, p_receipt_merchant text,
    p_decline_reason text, p_host_code text, p_host_message text,
    p_then text, p_points_per_unit bigint, p_minor_per_unit bigint,
    p_fail_code text, p_fail_reason text, p_fail_status text,
    OUT r_written text, OUT r_outcome text, OUT r_order orders, OUT r_tenders payment_transactions[],
    OUT r_now timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_order uuid;
BEGIN
    r_now := now();
    SELECT x.order_id INTO v_order FROM payment_transactions x WHERE x.store_id = p_store AND x.id = p_tender;
    -- The order first (commit and fail lock it too), then the fence: as gw_lease_held.
    PERFORM 1 FROM orders x WHERE x.store_id = p_store AND x.id = v_order FOR UPDATE;
    IF v_order IS NULL OR NOT gw_lease_held(p_store, v_order, p_owner) THEN
        r_written := 'lease_lost';
        RETURN;
    END IF;
    UPDATE payment_transactions
       SET status = p_status, approved_amount = coalesce(p_approved_amount, approved_amount),
           auth_code = coalesce(p_auth_code, auth_code), card_brand = coalesce(p_card_brand, card_brand),
           last4 = coalesce(p_last4, last4), batch_number = coalesce(p_batch_number, batch_number),
           transaction_number = coalesce(p_transaction_number, transaction_number),
           status_code = coalesce(p_status_code, status_code), raw_response = coalesce(p_raw, raw_response),
           last_error = p_last_error, failure_code = p_failure_code,
           payment_type = coalesce(p_payment_type, payment_type), entry_method = coalesce(p_entry_method, entry_method),
           application_label = coalesce(p_application_label, application_label), aid = coalesce(p_aid, aid),
           host_reference = coalesce(p_host_reference, host_reference),
           receipt_customer = coalesce(p_receipt_customer, receipt_customer),
           receipt_merchant = coalesce(p_receipt_merchant, receipt_merchant),
           decline_reason = p_decline_reason, host_code = coalesce(p_host_code, host_code),
           host_message = coalesce(p_host_message, host_message),
           capture_status = CASE WHEN p_status IN ('voided', 'failed') THEN NULL ELSE capture_status END,
           resolved_at = CASE WHEN p_status IN ('processing', 'unknown') THEN NULL ELSE now() END,
           updated_at = now()
     WHERE store_id = p_store AND id = p_tender AND status = ANY(p_from);
    IF NOT FOUND THEN
        r_written := 'stale';
    ELSE
        r_written := 'ok';
        INSERT INTO audit_events (store_id, kind, order_id, transaction_id, detail)
        VALUES (p_store, 'tender.' || p_status, v_order, p_tender, coalesce(p_audit, '{}'::jsonb));
        -- A completion the schema refuses (a CHECK, an inventory row changed by hand) never takes
        -- the answer with it: the answer stays stored and the daemon is told 'error' (a refused
        -- transition, counted and alerted on), as when the two were separate transactions.
        BEGIN
            IF p_then = 'commit' THEN
                r_outcome := gw_commit_checkout(p_store, v_order, p_points_per_unit, p_minor_per_unit,
                                                p_owner)->>'outcome';
            ELSIF p_then = 'fail' THEN
                r_outcome := gw_fail_checkout(p_store, v_order, p_fail_code, p_fail_reason, p_fail_status,
                                              p_owner)->>'outcome';
            END IF;
        EXCEPTION WHEN integrity_constraint_violation OR data_exception THEN
            RAISE WARNING 'gw_record_tender_and: % of order % refused: % (%)', p_then, v_order, SQLERRM, SQLSTATE;
            r_outcome := 'error';
        END;
    END IF;
    SELECT * INTO r_order FROM orders x WHERE x.store_id = p_store AND x.id = v_order;
    SELECT coalesce(array_agg(t ORDER BY t.kind, t.tender_index, t.created_at), '{}') INTO r_tenders
      FROM payment_transactions t WHERE t.store_id = p_store AND t.order_id = v_order;
END;
$$;

-- sql/008's rule for a new function: a fixed search_path (its schema, then pg_temp), nothing for
-- PUBLIC or the public roles, EXECUTE for the daemon's group role.
DO $$
DECLARE
    v_fn     text;
    v_public text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'gw_checkout_intent(text, uuid, text, text, text, bigint[], text, text, text, text, text, double precision,'
        ' text[], integer[], bigint[], uuid[], text[], text[], bigint[], bigint[], text[], text[], integer[], text[],'
        ' uuid, bigint, bigint)',
        'gw_record_tender_and(text, uuid, text, text, text[], bigint, text, text, text, text, text, text, jsonb,'
        ' text, jsonb, text, text, text, text, text, text, text, text, text, text, text, text, bigint, bigint,'
        ' text, text, text)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
        FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', v_fn, v_public);
        END LOOP;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO gatewayd_app', v_fn);
    END LOOP;
END;
$$;
