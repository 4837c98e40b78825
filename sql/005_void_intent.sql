-- A void's durable intent: set just before a Void leaves for the terminal, so that after a crash
-- recovery asks the terminal instead of trusting the 'approved' it last wrote down, and a refund
-- of a charge whose void may have gone through is refused (it would pay the customer twice).
ALTER TABLE payment_transactions ADD COLUMN IF NOT EXISTS void_requested_at timestamptz;
