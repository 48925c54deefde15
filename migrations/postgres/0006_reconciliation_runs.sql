-- What each `subledger reconcile` found, for the dashboard's inbox page (the last run's
-- differences) and for operators asking what the last runs said. One row per run, numbered
-- in the order the runs were recorded (several can finish in one millisecond of a test
-- clock), with its report as the JSON `subledger reconcile --json` writes. Only the newest
-- runs are kept (Database::record_reconciliation), so the table stays small.
CREATE TABLE reconciliation_runs
(
    seq            bigserial PRIMARY KEY,
    run_id         text   NOT NULL UNIQUE,
    finished_at_ms bigint NOT NULL,
    report         text   NOT NULL
);
