-- The deployment guide's monitoring queries, as views (gatewayd report reads them).

-- Payment success rate, last hour: tender outcomes and their share.
CREATE OR REPLACE VIEW payment_success_last_hour AS
SELECT store_id, status, count(*) AS count,
       round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY store_id), 2) AS percentage
  FROM payment_transactions
 WHERE kind = 'payment' AND created_at > now() - interval '1 hour'
 GROUP BY store_id, status;

-- Order completion, last hour, by status and payment status.
CREATE OR REPLACE VIEW order_completion_last_hour AS
SELECT store_id, status, payment_status, count(*) AS count
  FROM orders
 WHERE created_at > now() - interval '1 hour'
 GROUP BY store_id, status, payment_status;

-- Orders stuck in payment limbo for more than an hour.
CREATE OR REPLACE VIEW stuck_orders AS
SELECT store_id, id, order_number, status, payment_status, created_at, age(now(), created_at) AS age
  FROM orders
 WHERE status IN ('pending_payment', 'payment_processing', 'payment_authorized')
   AND created_at < now() - interval '1 hour';

-- Terminal health summary.
CREATE OR REPLACE VIEW terminal_health_summary AS
SELECT store_id, id, processor_name, health_status, last_health_check, last_health_error,
       is_active, is_live
  FROM payment_processors;

-- Payment success rate by terminal over the last 7 days.
CREATE OR REPLACE VIEW terminal_success_rate_7d AS
SELECT pp.store_id, pp.id AS terminal_id, pp.processor_name,
       count(*) AS total_transactions,
       count(*) FILTER (WHERE pt.status IN ('approved', 'refunded')) AS successful,
       count(*) FILTER (WHERE pt.status IN ('declined', 'failed', 'unknown', 'voided')) AS failed,
       round(100.0 * count(*) FILTER (WHERE pt.status IN ('approved', 'refunded')) / count(*), 2)
           AS success_rate
  FROM payment_transactions pt
  JOIN payment_processors pp ON pp.store_id = pt.store_id AND pp.id = pt.payment_processor_id
 WHERE pt.kind = 'payment' AND pt.created_at > now() - interval '7 days'
 GROUP BY pp.store_id, pp.id, pp.processor_name;
