-- Subledger's schema on PostgreSQL, for production and scale-out.

-- The cqrs-es event table (postgres-es inserts and reads these columns by name), plus:
--   position, tx    a global order projectors can follow safely. A sequence value is not commit
--                   order: a transaction can take position 10 and commit after position 11 is
--                   visible. Projectors therefore read in (tx, position) order and only rows whose
--                   transaction is older than every transaction still running
--                   (pg_snapshot_xmin), so nothing can later appear behind their checkpoint and a
--                   rolled-back transaction leaves no gap to wait for.
--   stripe_*, ...   typed views of the metadata every event carries, for queries and audits.
CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         json                         NOT NULL,
    metadata        json                         NOT NULL,
    position        bigserial                    NOT NULL,
    tx              xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    stripe_event_id text GENERATED ALWAYS AS (metadata ->> 'stripe_event_id') STORED,
    stripe_created  bigint GENERATED ALWAYS AS ((metadata ->> 'stripe_created')::bigint) STORED,
    received_at     text GENERATED ALWAYS AS (metadata ->> 'received_at') STORED,
    correlation_id  text GENERATED ALWAYS AS (metadata ->> 'correlation_id') STORED,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

CREATE UNIQUE INDEX events_position ON events (position);
CREATE INDEX events_commit_order ON events (tx, position);
CREATE INDEX events_stripe_event_id ON events (stripe_event_id);

-- Every verified Stripe event exactly as received, unique on Stripe's event id.
CREATE TABLE inbox
(
    event_id        text PRIMARY KEY,
    event_type      text    NOT NULL,
    api_version     text,
    livemode        boolean NOT NULL,
    account         text,
    stripe_created  bigint  NOT NULL,
    payload         text    NOT NULL,
    received_at_ms  bigint  NOT NULL,
    correlation_id  text    NOT NULL,
    status          text    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'ignored')),
    attempts        integer NOT NULL DEFAULT 0,
    available_at_ms bigint  NOT NULL,
    locked_until_ms bigint,
    last_error      text,
    outcome         text,
    processed_at_ms bigint
);

CREATE INDEX inbox_pending ON inbox (stripe_created, received_at_ms, event_id) WHERE status = 'pending';

-- How far each catch-up projector has read the event log.
CREATE TABLE projector_checkpoints
(
    name     text PRIMARY KEY,
    tx       bigint NOT NULL,
    position bigint NOT NULL
);

INSERT INTO projector_checkpoints (name, tx, position) VALUES ('billing_views', 0, 0);

-- The per-customer billing facts entitlements are computed from (catalog-independent).
CREATE TABLE billing_views
(
    customer_id text PRIMARY KEY,
    view        text   NOT NULL,
    position    bigint NOT NULL
);
