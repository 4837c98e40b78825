-- 008: least privilege. Nothing of gatewayd's is readable, writable or callable by PUBLIC or by
-- the roles a hosted PostgreSQL gives the public (Supabase: anon and authenticated, whose key is
-- in every app, and service_role, whose key sits in edge functions and bypasses row-level
-- security). The daemon works as a member of gatewayd_app; people who reconcile, as members of
-- gatewayd_operator (the guide's functions and views, nothing else).
--
-- THE RULE FOR EVERY LATER MIGRATION (tests/store/test_least_privilege.py fails without it):
--   * A new table: ENABLE ROW LEVEL SECURITY with the one policy `gatewayd_app` (TO gatewayd_app
--     USING (true) WITH CHECK (true)), REVOKE ALL from PUBLIC and from anon, authenticated and
--     service_role where they exist (Supabase's default privileges grant them everything the
--     owner creates), and GRANT gatewayd_app exactly what the daemon does to it (DELETE only
--     where it deletes). Its sequences: the same revokes, USAGE to gatewayd_app.
--   * Every CREATE OR REPLACE FUNCTION writes `SET search_path = <its schema>, pg_temp` in its
--     own definition: replacing a function drops the SET (and the SECURITY DEFINER) that this
--     file gave it. A new function or view: the same revokes, then its grants. Name functions
--     gw_*: this file and the rule above only touch gatewayd's own names, so that a schema
--     shared with other software (Supabase's public) keeps its other objects as they are.
--   * A SECURITY DEFINER function (or a view, which runs with its owner's rights) is callable
--     by gatewayd_app and gatewayd_operator only, and always has a fixed search_path.
--
-- Why a policy and not BYPASSRLS for the daemon: BYPASSRLS is an attribute of a login role, not
-- inherited through membership, applies to every table of the database (the store's own ones
-- too), and only a superuser (PostgreSQL 15 and older) or a role that has it may hand it out;
-- Supabase's postgres is no superuser. The policy names gatewayd's tables alone, and every role
-- that `gatewayd migrate --app-role` makes a member of gatewayd_app gets it.
--
-- Why the monitoring views keep their owner's rights (no security_invoker): with
-- security_invoker, gatewayd_operator would need SELECT on orders and payment_transactions
-- themselves, and a policy, to read five aggregates. Owner-rights views read past row-level
-- security, so they are revoked from PUBLIC and the public roles like everything else and
-- granted to gatewayd_app and gatewayd_operator only (Supabase's linter flags such a view only
-- when anon or authenticated may select from it).
--
-- find_orphaned_payments() and cleanup_stale_pending_orders(int) become SECURITY DEFINER for the
-- same reason: gatewayd_operator runs them with EXECUTE alone, never touching the tables.

DO $$
BEGIN
    IF to_regclass('orders') IS NULL OR to_regclass('orders')::oid <> to_regclass(format('%I.orders', current_schema()))::oid THEN
        RAISE EXCEPTION 'gatewayd''s tables are not in the current schema %: migrate with the search_path they were created with', current_schema();
    END IF;
END;
$$;

-- The two group roles; a second database of the same cluster (or a racing migration) may have
-- made them already.
DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['gatewayd_app', 'gatewayd_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO gatewayd_app, gatewayd_operator', current_schema());
END;
$$;

-- Tables: row-level security with one policy, for the daemon; its privileges, exactly what
-- gatewayd/store and the gw_* functions (which run with the caller's rights) do. It never
-- deletes; audit_events and loyalty_ledger are only ever appended to.
DO $$
DECLARE
    v_grants constant jsonb := jsonb_build_object(
        'payment_processors',   'SELECT, INSERT, UPDATE',
        'register_sessions',    'SELECT, INSERT, UPDATE',
        'orders',               'SELECT, INSERT, UPDATE',
        'order_items',          'SELECT, INSERT, UPDATE',
        'inventory',            'SELECT, INSERT, UPDATE',
        'loyalty_accounts',     'SELECT, INSERT, UPDATE',
        'loyalty_ledger',       'SELECT, INSERT',
        'refunds',              'SELECT, INSERT, UPDATE',
        'payment_transactions', 'SELECT, INSERT, UPDATE',
        'audit_events',         'SELECT, INSERT',
        'store_counters',       'SELECT, INSERT, UPDATE',
        'schema_migrations',    'SELECT');
    v_table  text;
    v_seq    regclass;
    v_public text;
BEGIN
    FOR v_table IN SELECT jsonb_object_keys(v_grants) LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', v_table);
        EXECUTE format('DROP POLICY IF EXISTS gatewayd_app ON %I', v_table);
        EXECUTE format('CREATE POLICY gatewayd_app ON %I TO gatewayd_app USING (true) WITH CHECK (true)', v_table);
        EXECUTE format('REVOKE ALL ON TABLE %I FROM PUBLIC, gatewayd_app, gatewayd_operator', v_table);
        FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
            EXECUTE format('REVOKE ALL ON TABLE %I FROM %I', v_table, v_public);
        END LOOP;
        EXECUTE format('GRANT %s ON TABLE %I TO gatewayd_app', v_grants->>v_table, v_table);
        -- identity and serial sequences belong to their table
        FOR v_seq IN SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                      WHERE d.classid = 'pg_class'::regclass AND d.refobjid = to_regclass(v_table)
                        AND d.deptype IN ('a', 'i') AND s.relkind = 'S' LOOP
            EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM PUBLIC', v_seq);
            FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
                EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM %I', v_seq, v_public);
            END LOOP;
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO gatewayd_app', v_seq);
        END LOOP;
    END LOOP;

    -- order_number_seq: the order numbers before 007 counted per store (no table owns it).
    REVOKE ALL ON SEQUENCE order_number_seq FROM PUBLIC;
    FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE order_number_seq FROM %I', v_public);
    END LOOP;
    GRANT USAGE ON SEQUENCE order_number_seq TO gatewayd_app;
END;
$$;

-- The guide's monitoring views: the daemon's reports and the operator read them.
DO $$
DECLARE
    v_view   text;
    v_public text;
BEGIN
    FOREACH v_view IN ARRAY ARRAY['payment_success_last_hour', 'order_completion_last_hour', 'stuck_orders',
                                  'terminal_health_summary', 'terminal_success_rate_7d'] LOOP
        EXECUTE format('REVOKE ALL ON TABLE %I FROM PUBLIC', v_view);
        FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
            EXECUTE format('REVOKE ALL ON TABLE %I FROM %I', v_view, v_public);
        END LOOP;
        EXECUTE format('GRANT SELECT ON TABLE %I TO gatewayd_app, gatewayd_operator', v_view);
    END LOOP;
END;
$$;

-- The guide's two reconciliation functions run with their owner's rights (see the top).
ALTER FUNCTION find_orphaned_payments(text) SECURITY DEFINER;
ALTER FUNCTION cleanup_stale_pending_orders(integer, text) SECURITY DEFINER;

-- Every gatewayd function: a fixed search_path (its own schema, then pg_temp last so that a
-- temporary object can never stand in for one of ours), no EXECUTE for PUBLIC or the public
-- roles; the daemon calls them all but the trigger function, the operator the guide's two.
DO $$
DECLARE
    v_fn     record;
    v_public text;
BEGIN
    FOR v_fn IN
        SELECT p.oid::regprocedure AS sig, p.proname, n.nspname, p.prorettype = 'trigger'::regtype AS is_trigger
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = current_schema()
           AND (p.proname LIKE 'gw\_%' OR p.proname IN ('find_orphaned_payments', 'cleanup_stale_pending_orders',
                                                        'audit_events_append_only'))
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid
                              AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', v_fn.sig, v_fn.nspname);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, gatewayd_app, gatewayd_operator', v_fn.sig);
        FOR v_public IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated', 'service_role') LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', v_fn.sig, v_public);
        END LOOP;
        IF NOT v_fn.is_trigger THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO gatewayd_app', v_fn.sig);
        END IF;
        IF v_fn.proname IN ('find_orphaned_payments', 'cleanup_stale_pending_orders') THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO gatewayd_operator', v_fn.sig);
        END IF;
    END LOOP;
END;
$$;
