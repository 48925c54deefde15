-- Outbound notifications: each entitlement change POSTed to every configured endpoint. The
-- change feed (entitlement_changes) is the outbox; this is how far each endpoint got. An
-- endpoint's changes are spread over lanes by customer, each lane delivered in feed order,
-- so a customer's changes arrive in order while one failing customer holds up only its lane.
CREATE TABLE notification_lanes
(
    endpoint          text   NOT NULL,
    lane              integer NOT NULL,
    -- The newest change this lane is done with (delivered, or given up after retrying).
    delivered_through integer NOT NULL,
    -- A server works a lane while it holds the lease; a dead server's runs out.
    leased_until_ms   integer NOT NULL DEFAULT 0,
    -- The change being retried, if one is: how often it was tried, since when, and when next.
    retry_seq         integer,
    retry_attempts    integer NOT NULL DEFAULT 0,
    first_attempt_ms  integer,
    next_attempt_ms   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint, lane)
) STRICT;

-- Every attempt, for operators (GET /v1/notifications).
CREATE TABLE notification_attempts
(
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint    text   NOT NULL,
    change_seq  integer NOT NULL,
    customer_id text   NOT NULL,
    attempt     integer NOT NULL,
    at_ms       integer NOT NULL,
    -- delivered, failed (to be retried) or gave_up
    outcome     text   NOT NULL,
    status      integer,
    error       text,
    duration_ms integer NOT NULL
) STRICT;
CREATE INDEX notification_attempts_by_change ON notification_attempts (change_seq);
