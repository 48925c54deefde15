use std::sync::Arc;
use std::time::Duration;

use subledger_domain::catalog::Catalog;
use subledger_stripe::WebhookSecret;

use crate::clock::{Clock, SystemClock};

/// Everything the engine needs, already parsed and validated.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `sqlite://…`, `sqlite::memory:` or `postgres://…`.
    pub database_url: String,
    /// Every secret a delivery may be signed with (more than one while rotating).
    pub webhook_secrets: Vec<WebhookSecret>,
    /// How far a signature's timestamp may be from now, either way.
    pub signature_tolerance: Duration,
    pub catalog: Arc<Catalog>,
    pub clock: Arc<dyn Clock>,
    /// How many inbox rows a worker claims at once.
    pub worker_batch_size: i64,
    /// How long a claimed row stays leased to its worker before another may take it.
    pub worker_lease: Duration,
    /// How often workers and projectors look for work written by other processes.
    pub poll_interval: Duration,
}

impl EngineConfig {
    pub fn new(database_url: impl Into<String>, catalog: Catalog) -> Self {
        Self {
            database_url: database_url.into(),
            webhook_secrets: Vec::new(),
            signature_tolerance: Duration::from_secs(300),
            catalog: Arc::new(catalog),
            clock: Arc::new(SystemClock),
            worker_batch_size: 64,
            worker_lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
        }
    }
}
