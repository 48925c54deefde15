//! What the tests that start `subledger serve` share.

use std::path::PathBuf;

/// Every variable `serve` reads, removed from each started process so the test's own
/// environment cannot leak into a case.
pub const SERVE_VARIABLES: [&str; 25] = [
    "SUBLEDGER_METRICS_ADDR",
    "SUBLEDGER_DATABASE_URL",
    "SUBLEDGER_ADDR",
    "SUBLEDGER_CATALOG",
    "SUBLEDGER_WEBHOOK_SECRETS",
    "SUBLEDGER_WEBHOOK_SECRETS_FILE",
    "SUBLEDGER_API_TOKENS",
    "SUBLEDGER_API_TOKENS_FILE",
    "SUBLEDGER_ADMIN_TOKENS",
    "SUBLEDGER_ADMIN_TOKENS_FILE",
    "SUBLEDGER_ALLOW_UNAUTHENTICATED",
    "SUBLEDGER_STRIPE_READ_KEY",
    "SUBLEDGER_STRIPE_READ_KEY_FILE",
    "SUBLEDGER_STORE_TIMEOUT_MS",
    "SUBLEDGER_STRIPE_TIMEOUT_MS",
    "SUBLEDGER_HTTP_HEADER_TIMEOUT_MS",
    "SUBLEDGER_HTTP_BODY_TIMEOUT_MS",
    "SUBLEDGER_HTTP_MAX_CONNECTIONS",
    "SUBLEDGER_HTTP_DRAIN_TIMEOUT_MS",
    "SUBLEDGER_WORKER_ROW_TIMEOUT_SECS",
    "SUBLEDGER_WORKER_LEASE_SECS",
    "SUBLEDGER_WORKER_BATCH_SIZE",
    "SUBLEDGER_WORKER_CONCURRENCY",
    "SUBLEDGER_LIVEMODE",
    "SUBLEDGER_LOG_FORMAT",
];

/// The example catalog the README ships.
pub fn example_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../catalog.example.yaml")
}
