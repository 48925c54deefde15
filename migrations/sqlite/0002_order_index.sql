-- Orders: a PaymentIntent with metadata.order_id. The worker copies the order id into the
-- metadata of the payment's domain events; this makes it a column an order can be found by.
ALTER TABLE events ADD COLUMN order_id text GENERATED ALWAYS AS (json_extract(metadata, '$.order_id')) VIRTUAL;
CREATE INDEX events_order_id ON events (order_id) WHERE order_id IS NOT NULL;
