-- Events the projector could not decode: a damaged row, or a shape only a newer build knows.
-- Each is skipped and kept here with its error, so one bad event cannot stop projection for
-- every customer (it used to, forever, across restarts). Listed by `subledger replay`, counted
-- by /readyz; a replay (after the build that reads them is deployed) decides them again.
CREATE TABLE projection_quarantine
(
    position          bigint PRIMARY KEY,
    aggregate_type    text   NOT NULL,
    aggregate_id      text   NOT NULL,
    sequence          bigint NOT NULL,
    event_type        text   NOT NULL,
    error             text   NOT NULL,
    quarantined_at_ms bigint NOT NULL
);
