-- Subledger's schema on SQLite, the embedded default.

-- The cqrs-es event table (sqlite-es inserts and reads these columns by name), plus:
--   position        global commit order, assigned by the trigger below. SQLite has one writer
--                   at a time, so the next number at insert time is also commit order.
--   stripe_*, ...   typed views of the metadata every event carries, for queries and audits.
CREATE TABLE events
(
    aggregate_type  text                          NOT NULL,
    aggregate_id    text                          NOT NULL,
    sequence        integer CHECK (sequence >= 0) NOT NULL,
    event_type      text                          NOT NULL,
    event_version   text                          NOT NULL,
    payload         text                          NOT NULL,
    metadata        text                          NOT NULL,
    position        integer,
    stripe_event_id text GENERATED ALWAYS AS (json_extract(metadata, '$.stripe_event_id')) VIRTUAL,
    stripe_created  integer GENERATED ALWAYS AS (CAST(json_extract(metadata, '$.stripe_created') AS integer)) VIRTUAL,
    received_at     text GENERATED ALWAYS AS (json_extract(metadata, '$.received_at')) VIRTUAL,
    correlation_id  text GENERATED ALWAYS AS (json_extract(metadata, '$.correlation_id')) VIRTUAL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;

CREATE UNIQUE INDEX events_position ON events (position);
CREATE INDEX events_stripe_event_id ON events (stripe_event_id);

CREATE TRIGGER events_assign_position AFTER INSERT ON events
BEGIN
    UPDATE events
       SET position = (SELECT COALESCE(MAX(position), 0) + 1 FROM events)
     WHERE rowid = NEW.rowid;
END;

-- Every verified Stripe event exactly as received, unique on Stripe's event id.
CREATE TABLE inbox
(
    event_id        text PRIMARY KEY,
    event_type      text    NOT NULL,
    api_version     text,
    livemode        integer NOT NULL,
    account         text,
    stripe_created  integer NOT NULL,
    payload         text    NOT NULL,
    received_at_ms  integer NOT NULL,
    correlation_id  text    NOT NULL,
    status          text    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'ignored')),
    attempts        integer NOT NULL DEFAULT 0,
    available_at_ms integer NOT NULL,
    locked_until_ms integer,
    last_error      text,
    outcome         text,
    processed_at_ms integer
) STRICT;

CREATE INDEX inbox_pending ON inbox (stripe_created, received_at_ms, event_id) WHERE status = 'pending';

-- How far each catch-up projector has read the event log.
CREATE TABLE projector_checkpoints
(
    name     text PRIMARY KEY,
    tx       integer NOT NULL,
    position integer NOT NULL
) STRICT;

INSERT INTO projector_checkpoints (name, tx, position) VALUES ('billing_views', 0, 0);

-- The per-customer billing facts entitlements are computed from (catalog-independent).
CREATE TABLE billing_views
(
    customer_id text PRIMARY KEY,
    view        text    NOT NULL,
    position    integer NOT NULL
) STRICT;
