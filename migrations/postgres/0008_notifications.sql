-- Outbound notifications: each entitlement change POSTed to every configured endpoint. The
-- change feed (entitlement_changes) is the outbox; this is how far each endpoint got. An
-- endpoint's changes are spread over lanes by customer, each lane delivered in feed order,
-- so a customer's changes arrive in order while one failing customer holds up only its lane.
CREATE TABLE notification_lanes
(
    endpoint          text   NOT NULL,
    lane              bigint NOT NULL,
    -- The newest change this lane is done with (delivered, or given up after retrying).
    delivered_through bigint NOT NULL,
    -- A server works a lane while it holds the lease; a dead server's runs out.
    leased_until_ms   bigint NOT NULL DEFAULT 0,
    -- The change being retried, if one is: how often it was tried, since when, and when next.
    retry_seq         bigint,
    retry_attempts    bigint NOT NULL DEFAULT 0,
    first_attempt_ms  bigint,
    next_attempt_ms   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (endpoint, lane)
);

-- Every attempt, for operators (GET /v1/notifications).
CREATE TABLE notification_attempts
(
    id          bigserial PRIMARY KEY,
    endpoint    text   NOT NULL,
    change_seq  bigint NOT NULL,
    customer_id text   NOT NULL,
    attempt     bigint NOT NULL,
    at_ms       bigint NOT NULL,
    -- delivered, failed (to be retried) or gave_up
    outcome     text   NOT NULL,
    status      bigint,
    error       text,
    duration_ms bigint NOT NULL
);
CREATE INDEX notification_attempts_by_change ON notification_attempts (change_seq);
