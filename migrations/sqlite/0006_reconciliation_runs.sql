-- What each `subledger reconcile` found, for the dashboard's inbox page (the last run's
-- differences) and for operators asking what the last runs said. One row per run: its report
-- as the JSON `subledger reconcile --json` prints. The newest runs are kept (see
-- Database::record_reconciliation), so the table stays small.
CREATE TABLE reconciliation_runs
(
    run_id         text   PRIMARY KEY,
    finished_at_ms bigint NOT NULL,
    report         text   NOT NULL
);
CREATE INDEX reconciliation_runs_by_time ON reconciliation_runs (finished_at_ms);
