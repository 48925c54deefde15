use std::sync::Arc;
use std::time::Duration;

use subledger_domain::catalog::Catalog;
use subledger_stripe::WebhookSecret;

use crate::clock::{Clock, SystemClock};
use crate::refetch::StripeObjects;

/// Everything the engine needs, already parsed and validated. Its `Debug` leaves out the
/// database URL (it may hold a password) and the secrets.
#[derive(Clone)]
pub struct EngineConfig {
    /// `sqlite://…`, `sqlite::memory:` or `postgres://…`.
    pub database_url: String,
    /// Every secret a delivery may be signed with (more than one while rotating).
    pub webhook_secrets: Vec<WebhookSecret>,
    /// How far a signature's timestamp may be from now, either way.
    pub signature_tolerance: Duration,
    /// The catalog file this server was started with. What it serves is settled against the
    /// versions recorded in the store when it starts (see `crate::catalogs`).
    pub catalog: Arc<Catalog>,
    /// Publish `catalog` as the version in force when it differs from the newest recorded
    /// one (`--catalog-publish`); otherwise the recorded one is served.
    pub catalog_publish: bool,
    /// Who publishes a version, as recorded beside it.
    pub catalog_published_by: String,
    /// When a version published by this start counts from; `None`: the clock's now. The
    /// scenario runner publishes at the story's time, which is what its `?at=` asks about.
    pub catalog_published_at: Option<chrono::DateTime<chrono::Utc>>,
    pub clock: Arc<dyn Clock>,
    /// How many inbox rows a worker claims at once; `None` for the store's default
    /// ([`EngineConfig::DEFAULT_BATCH_SQLITE`], [`EngineConfig::DEFAULT_BATCH_POSTGRES`]).
    pub worker_batch_size: Option<i64>,
    /// How many customers' rows a worker applies at once (each customer's in order). On
    /// SQLite, which has one writer, rows are applied one at a time whatever this says.
    pub worker_concurrency: usize,
    /// How long a claimed row stays leased to its worker before another may take it.
    pub worker_lease: Duration,
    /// How often workers and projectors look for work written by other processes.
    pub poll_interval: Duration,
    /// The customer metadata key holding the product's own user id (`/v1/users/{id}`).
    pub user_id_metadata_key: String,
    /// Where the worker fetches an object when its events cannot be ordered. Without it, such
    /// an event stays parked (retried with backoff) until one is configured.
    pub stripe_objects: Option<Arc<dyn StripeObjects>>,
    /// The longest a statement may take on PostgreSQL, and a webhook may wait for its inbox
    /// row to be stored (on either store) before it is answered 503 (Stripe retries it).
    pub store_timeout: Duration,
    /// Which of Stripe's modes this deployment serves. Events of the other mode are stored,
    /// recorded as ignored with the reason, and never applied.
    pub livemode: bool,
    /// The longest the worker spends on one row it runs on its own (one that asks Stripe, a
    /// payment, a refused command) before it leaves it to be retried.
    pub worker_row_timeout: Duration,
    /// The longest product services may reuse an entitlement answer without asking again
    /// (`Cache-Control: max-age`); never longer than the answer holds (the next grace end).
    /// Zero: revalidate each time (with the `ETag`), since a webhook may change it any moment.
    pub answer_max_age: Duration,
    /// Where entitlement changes are POSTed (`None`: nowhere).
    pub notify: Option<crate::notify::NotifyConfig>,
}

impl EngineConfig {
    /// Rows a worker claims at once on SQLite. It has one writer: a bigger batch holds the
    /// file longer per commit, and webhook acknowledgements wait behind it, for no gain in
    /// throughput (`make bench`: 6,100 rows/s at 64, 6,700 at 256).
    pub const DEFAULT_BATCH_SQLITE: i64 = 64;
    /// Rows a worker claims at once on PostgreSQL: a claim and a commit cost a few round trips
    /// and a WAL flush each whatever their size, so bigger batches spread them (`make bench`:
    /// 2,300 rows/s at 64, 3,800 at 256, 4,600 at 1,024, where a batch takes 250 ms).
    pub const DEFAULT_BATCH_POSTGRES: i64 = 256;

    /// The default [`Self::store_timeout`]: far beyond a healthy store's slowest statement
    /// (tens of milliseconds in `make bench`), well inside Stripe's 20-second wait for an
    /// acknowledgement.
    pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(5);

    pub fn new(database_url: impl Into<String>, catalog: Catalog) -> Self {
        Self {
            database_url: database_url.into(),
            webhook_secrets: Vec::new(),
            signature_tolerance: Duration::from_secs(300),
            catalog: Arc::new(catalog),
            catalog_publish: false,
            catalog_published_by: "subledger".to_owned(),
            catalog_published_at: None,
            clock: Arc::new(SystemClock),
            worker_batch_size: None,
            worker_concurrency: 8,
            worker_lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
            user_id_metadata_key: "user_id".to_owned(),
            stripe_objects: None,
            store_timeout: Self::DEFAULT_STORE_TIMEOUT,
            livemode: false,
            worker_row_timeout: Duration::from_secs(30),
            answer_max_age: Duration::ZERO,
            notify: None,
        }
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.database_url.split(':').next().unwrap_or_default();
        f.debug_struct("EngineConfig")
            .field("database", &format_args!("{scheme}:<redacted>"))
            .field("webhook_secrets", &self.webhook_secrets.len())
            .field("signature_tolerance", &self.signature_tolerance)
            .field("worker_batch_size", &self.worker_batch_size)
            .field("worker_concurrency", &self.worker_concurrency)
            .field("worker_lease", &self.worker_lease)
            .field("answer_max_age", &self.answer_max_age)
            .field("catalog_publish", &self.catalog_publish)
            .field("catalog_published_at", &self.catalog_published_at)
            .field("notify", &self.notify)
            .field("poll_interval", &self.poll_interval)
            .field("user_id_metadata_key", &self.user_id_metadata_key)
            .field("fetches_from_stripe", &self.stripe_objects.is_some())
            .field("store_timeout", &self.store_timeout)
            .field("livemode", &self.livemode)
            .field("worker_row_timeout", &self.worker_row_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_holds_no_secret() {
        let catalog = Catalog::from_yaml("c", "default_plan: free\nplans:\n  free: {}\n").unwrap();
        let mut config = EngineConfig::new("postgres://app:hunter2@db/billing", catalog);
        config.webhook_secrets = vec![WebhookSecret::new("whsec_topsecret")];
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("topsecret"), "{printed}");
        assert!(printed.contains("postgres:<redacted>"), "{printed}");
    }
}
