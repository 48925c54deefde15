-- The entitlement change feed (GET /v1/changes, its stream, outbound notifications): each
-- row is one customer's complete new entitlements answer, numbered in the order the changes
-- were recorded. Every server may record them; one at a time moves the feed's checkpoint
-- (entitlement_feed, compare-and-set on its version) in the transaction that writes the rows,
-- so each change is recorded once and the numbers follow the order of commits.
CREATE TABLE entitlement_changes
(
    seq           bigserial PRIMARY KEY,
    customer_id   text   NOT NULL,
    -- What made it: 'log:<position>' (the newest event of the customer the change reflects)
    -- or 'deadline:<RFC 3339>' (a grace period that ended, with no event).
    cause         text   NOT NULL,
    changed_at_ms bigint NOT NULL,
    answer        text   NOT NULL
);
CREATE INDEX entitlement_changes_by_customer ON entitlement_changes (customer_id, seq);

-- The answer each customer's latest change carried (its digest), and when it stops holding
-- without an event (a grace period's end): what the next change is compared with.
CREATE TABLE entitlement_feed_state
(
    customer_id    text   PRIMARY KEY,
    answer_digest  text   NOT NULL,
    valid_until_ms bigint
);
CREATE INDEX entitlement_feed_state_due ON entitlement_feed_state (valid_until_ms);

-- How far into the event log the feed has looked.
CREATE TABLE entitlement_feed
(
    name     text   PRIMARY KEY,
    tx       bigint NOT NULL,
    position bigint NOT NULL,
    version  bigint NOT NULL
);
INSERT INTO entitlement_feed (name, tx, position, version) VALUES ('changes', 0, 0, 0);
