-- Per-customer order across workers: the customer an event is about (or its object, without
-- one). A worker claims a key's due rows only while no other worker holds a lease on that key,
-- so one customer's events are handled one at a time, oldest Stripe time first.
ALTER TABLE inbox ADD COLUMN ordering_key text;
CREATE INDEX inbox_leased_keys ON inbox (ordering_key, locked_until_ms) WHERE status = 'pending';
