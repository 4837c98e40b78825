-- 011: order numbers from a sequence of each store's own (issue 16).
--
-- 007 numbered orders per store from one row per store (store_counters), updated by every
-- intent: the row stayed locked until the intent's commit was durable, so the intents of one
-- store waited for each other's commits one by one (in `python -m bench throughput`, 32 POS of one
-- store: 2.7 backends waiting on it at any moment, on average). A sequence is never locked for a
-- transaction: nextval takes the next number at once. Each store gets its own, made on its first
-- order by gw_next_order_number (SECURITY DEFINER: the daemon's role makes no DDL itself),
-- starting after the store's last number in store_counters; from then on store_counters only
-- says where each store's sequence started (a new store gets its row, 0, with its sequence).
--
-- The trade-off: a number taken by an intent that then rolls back (two daemons racing on one
-- idempotency key, a crash mid-statement) is not given again, so a store's numbers can skip one
-- now and then; they stay unique, per store, and in the order the intents asked for them. Both the
-- intent of 010 and 009's gw_prepare_checkout (what an older daemon calls during an upgrade)
-- number from the same sequence, so old and new daemons never hand out one number twice.

CREATE OR REPLACE FUNCTION gw_next_order_number(p_store text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    v_seq    text := 'gw_order_number_' || md5(p_store);
    v_public text;
BEGIN
    IF to_regclass(v_seq) IS NULL THEN
        -- The store's first order since 011. Two intents racing: the second waits for the first
        -- to commit, then finds the sequence there (DuplicateTable) and uses it.
        PERFORM pg_advisory_xact_lock(hashtextextended('gw_order_number ' || p_store, 0));
        BEGIN
            INSERT INTO store_counters (store_id, last_order_number) VALUES (p_store, 0)
            ON CONFLICT (store_id) DO NOTHING;
            EXECUTE format('CREATE SEQUENCE %I START WITH %s', v_seq,
                           (SELECT last_order_number + 1 FROM store_counters WHERE store_id = p_store));
            EXECUTE format('REVOKE ALL ON SEQUENCE %I FROM PUBLIC', v_seq);
            FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
                EXECUTE format('REVOKE ALL ON SEQUENCE %I FROM %I', v_seq, v_public);
            END LOOP;
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
    RETURN lpad(nextval(v_seq)::text, 6, '0');
END;
$$;

-- The intent (010), numbered from the store's sequence.
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

        v_number := gw_next_order_number(p_store);

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

-- Prepare (009), for a daemon older than 010 during an upgrade: numbered from the same sequence.
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

    v_number := gw_next_order_number(p_store);

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

-- sql/008's rule: a fixed search_path (its schema, then pg_temp) on every function replaced or
-- made here, nothing for PUBLIC or the public roles, EXECUTE for the daemon's group role (the new
-- SECURITY DEFINER function for it alone: the operator numbers no order).
DO $$
DECLARE
    v_fn     text;
    v_public text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'gw_next_order_number(text)',
        'gw_prepare_checkout(text, jsonb)',
        'gw_checkout_intent(text, uuid, text, text, text, bigint[], text, text, text, text, text, double precision,'
        ' text[], integer[], bigint[], uuid[], text[], text[], bigint[], bigint[], text[], text[], integer[], text[],'
        ' uuid, bigint, bigint)'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn, current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', v_fn);
        FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', v_fn, v_public);
        END LOOP;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO gatewayd_app', v_fn);
    END LOOP;
END;
$$;
