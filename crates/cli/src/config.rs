//! Command-line flags, each with its `SUBLEDGER_` environment variable. Secrets come from the
//! environment only (or from a file named by `<VARIABLE>_FILE`, as Docker and Kubernetes
//! secrets are mounted), so they never show up in `ps` or shell history; they are held in
//! `secrecy`'s `SecretString` and never printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::{ExposeSecret, SecretString};
use subledger_domain::catalog::Catalog;
use subledger_engine::notify::NotifyConfig;
use subledger_engine::{EngineConfig, StripeObjects, WebhookSecret};
use subledger_server::{ApiToken, ApiTokens};
use subledger_stripe_client::{ApiKey, ReadPolicy, StripeApi, StripeReader};

#[derive(Debug, Parser)]
#[command(name = "subledger", version, about = "Billing state engine for Stripe")]
pub struct Cli {
    /// Where state lives: a SQLite file (embedded, zero setup) or postgres://user:pass@host/db.
    /// Default: sqlite://subledger.db (for `scenario run`: a fresh in-memory store per scenario).
    #[arg(
        long,
        env = "SUBLEDGER_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Log output format.
    #[arg(long, env = "SUBLEDGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the webhook receiver and the entitlement API (with the worker, unless --no-worker).
    Serve(ServeArgs),
    /// Process the inbox (and keep saved read models current) without serving HTTP.
    Worker(WorkerArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Play scenario files against a fresh engine through the built-in Stripe simulator.
    #[command(subcommand)]
    Scenario(ScenarioCommand),
    /// The built-in, deterministic Stripe simulator.
    #[command(subcommand)]
    Simulator(SimulatorCommand),
    /// Start on a Stripe account that already has customers: read it through the read key
    /// (SUBLEDGER_STRIPE_READ_KEY) and record what it holds, then apply the events Stripe
    /// could not deliver in the last 30 days. Resumable; safe to re-run. Exit status 2 on error.
    Backfill(BackfillArgs),
    /// Compare every customer's billing view with Stripe's live objects and report each
    /// difference, classified; --apply heals them by appending corrections. Exit status 0:
    /// nothing differs (or everything was healed), 1: differences left, 2: error.
    Reconcile(ReconcileArgs),
    /// Rebuild the read models from the event log (running servers pick them up without a
    /// restart); lists the events that cannot be decoded and were skipped (exit 1 if any).
    /// --verify rebuilds in scratch space and compares instead: exit 1 if any customer
    /// differs.
    Replay(ReplayArgs),
    /// Look at and re-run the inbox of Stripe events.
    #[command(subcommand)]
    Inbox(InboxCommand),
    /// Look at a catalog file before publishing it.
    #[command(subcommand)]
    Catalog(CatalogCommand),
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Validate a catalog file: every problem, each with its file and line. Exit status 0:
    /// valid, 1: problems found, 2: the file cannot be read.
    Check(CatalogCheckArgs),
}

#[derive(Debug, Args)]
pub struct CatalogCheckArgs {
    /// The catalog file (default: the one `serve` would read).
    #[arg(env = "SUBLEDGER_CATALOG")]
    pub file: PathBuf,

    /// Also ask Stripe, with the read key (SUBLEDGER_STRIPE_READ_KEY, which may then read
    /// prices), that every price id and lookup key the file names exists, and list the active
    /// prices no plan names.
    #[arg(long)]
    pub stripe: bool,

    /// Stripe's API base URL (default: Stripe's own).
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,

    /// How long one request to Stripe may take.
    #[arg(long, env = "SUBLEDGER_STRIPE_TIMEOUT_MS", default_value_t = 10_000)]
    pub stripe_timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this customer (repeatable; a connected account's as `acct_…/cus_…`). Default:
    /// every customer Subledger or Stripe knows, in the platform's account and in each
    /// connected account Subledger has heard from.
    #[arg(long = "customer", value_name = "ID")]
    pub customers: Vec<String>,

    /// Heal what differs by appending corrections (attributed to the reconciler).
    #[arg(long)]
    pub apply: bool,

    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<std::path::PathBuf>,

    /// The most requests a second to Stripe.
    #[arg(long, env = "SUBLEDGER_STRIPE_MAX_RPS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_requests_per_sec: u32,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Compare a rebuild with the saved views instead of replacing them; exit 1 if any differs.
    #[arg(long)]
    pub verify: bool,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// List inbox rows, oldest received first.
    List(InboxListArgs),
    /// Make pending (failing) events due now.
    Retry(InboxRetryArgs),
    /// Run processed and ignored events through today's translator again (after an upgrade
    /// taught it something). Idempotent: facts already recorded are not recorded twice.
    Reprocess(InboxReprocessArgs),
}

#[derive(Debug, Args)]
pub struct InboxListArgs {
    /// Only pending events whose last attempt failed.
    #[arg(long, conflicts_with_all = ["ignored", "pending"])]
    pub failing: bool,
    /// Only events recorded as ignored (not a billing fact Subledger tracks).
    #[arg(long, conflicts_with = "pending")]
    pub ignored: bool,
    /// Only events not processed yet.
    #[arg(long)]
    pub pending: bool,
    /// Only events of this Stripe type (e.g. invoice.paid).
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only events received at or after this date (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_parser = parse_date)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub limit: i64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct InboxRetryArgs {
    /// Stripe event ids (evt_…).
    #[arg(required = true, value_name = "EVENT_ID")]
    pub event_ids: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct InboxReprocessArgs {
    /// Only events of this Stripe type.
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// Only events received at or after this date (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_parser = parse_date)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl Command {
    /// Operator commands answer a failure with exit status 2, so that 1 can mean "found
    /// differences" (as `diff` does); the long-running ones keep 1.
    pub fn failure_status(&self) -> u8 {
        match self {
            Self::Backfill(_)
            | Self::Reconcile(_)
            | Self::Replay(_)
            | Self::Inbox(_)
            | Self::Catalog(_) => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Only this customer (repeatable). Default: every customer the key can list.
    #[arg(long = "customer", value_name = "ID")]
    pub customers: Vec<String>,

    /// Read this Stripe Connect connected account (sent as `Stripe-Account`) instead of the
    /// key's own; its customers are kept as `acct_…/cus_…`. Run once per connected account.
    #[arg(long, value_name = "ACCOUNT", value_parser = parse_account)]
    pub account: Option<String>,

    /// Only objects created at or after this date (YYYY-MM-DD or RFC 3339).
    #[arg(long, value_parser = parse_date)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,

    /// The most requests a second to Stripe (Stripe allows about 25 in test mode, 100 in live
    /// mode).
    #[arg(long, env = "SUBLEDGER_STRIPE_MAX_RPS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_requests_per_sec: u32,

    #[command(flatten)]
    pub engine: EngineArgs,
}

/// A Stripe account id (`acct_…`), as `--account` takes it.
fn parse_account(text: &str) -> Result<String, String> {
    if subledger_domain::ids::is_account_id(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a Stripe account id (acct_ and letters and digits)"
        ))
    }
}

/// `YYYY-MM-DD` (midnight UTC) or an RFC 3339 moment.
pub fn parse_date(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(moment) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(moment.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
        .ok_or_else(|| format!("`{text}` is not a date: use YYYY-MM-DD or an RFC 3339 time"))
}

#[derive(Debug, Subcommand)]
pub enum SimulatorCommand {
    /// Serve the simulated Stripe REST API (point async-stripe or curl at it) and forward its
    /// events as signed webhooks.
    Serve(SimulatorServeArgs),
}

#[derive(Debug, Args)]
pub struct SimulatorServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "SUBLEDGER_SIMULATOR_ADDR",
        default_value = "127.0.0.1:12111"
    )]
    pub addr: SocketAddr,

    /// Where to deliver webhooks, e.g. http://127.0.0.1:8080/webhooks/stripe.
    #[arg(long, env = "SUBLEDGER_SIMULATOR_FORWARD_TO")]
    pub forward_to: Option<String>,

    /// The signing secret for forwarded webhooks (Subledger's SUBLEDGER_WEBHOOK_SECRETS must
    /// include it).
    #[arg(
        long,
        env = "SUBLEDGER_SIMULATOR_WEBHOOK_SECRET",
        default_value = DEVELOPMENT_WEBHOOK_SECRET,
        hide_env_values = true,
        hide_default_value = true
    )]
    pub webhook_secret: String,
}

#[derive(Debug, Subcommand)]
pub enum ScenarioCommand {
    /// Run scenario files (default: every scenarios/*.yaml); exits non-zero if any fails.
    Run(ScenarioRunArgs),
}

#[derive(Debug, Args)]
pub struct ScenarioRunArgs {
    /// Scenario files, or directories whose *.yaml files to run.
    #[arg(default_value = "scenarios")]
    pub paths: Vec<PathBuf>,

    /// How webhooks reach the engine.
    #[arg(long, value_parser = ["in-order", "shuffled", "chaos"], default_value = "in-order")]
    pub delivery: String,

    /// Seed for shuffled and chaos delivery.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Run against Stripe test mode (STRIPE_API_KEY, test keys only) with real test clocks,
    /// checking a running Subledger that receives the webhooks (`stripe listen --forward-to`).
    #[arg(long)]
    pub stripe: bool,

    /// With --stripe: the running Subledger to check, host:port.
    #[arg(long, env = "SUBLEDGER_ENGINE_ADDR", default_value = "127.0.0.1:8080")]
    pub engine_addr: String,

    /// With --stripe: Stripe's API base URL (point it at `subledger simulator serve` to rehearse).
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,

    /// With --stripe: how long an expectation may wait for webhooks, in seconds.
    #[arg(long, default_value_t = 60)]
    pub settle_timeout_secs: u64,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SUBLEDGER_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,

    /// Do not process the inbox in this process (run `subledger worker` separately).
    #[arg(long, env = "SUBLEDGER_NO_WORKER")]
    pub no_worker: bool,

    /// A request's headers must arrive within this many milliseconds; a keep-alive
    /// connection that sends nothing for as long is closed.
    #[arg(long, env = "SUBLEDGER_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_timeout_ms: u64,

    /// A request's body may pause at most this many milliseconds between two pieces (a
    /// webhook whose body stops arriving is answered 408).
    #[arg(long, env = "SUBLEDGER_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_body_timeout_ms: u64,

    /// The most connections open at once; more wait to be accepted.
    #[arg(long, env = "SUBLEDGER_HTTP_MAX_CONNECTIONS", default_value_t = 4_096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub http_max_connections: u64,

    /// On SIGTERM, how long requests in flight may take to finish, in milliseconds.
    #[arg(long, env = "SUBLEDGER_HTTP_DRAIN_TIMEOUT_MS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub http_drain_timeout_ms: u64,

    /// Serve `/v1` reads without a token on an address other than loopback. Without it, such
    /// a server refuses to start unless SUBLEDGER_API_TOKENS or SUBLEDGER_ADMIN_TOKENS is set.
    /// Writes (holds) need an admin token either way.
    #[arg(long, env = "SUBLEDGER_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Also serve `GET /metrics` here, without a token, for a Prometheus scraper on a private
    /// network. Without it, `/metrics` is on the API's address behind an admin token.
    #[arg(long, env = "SUBLEDGER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ServeArgs {
    pub fn http_limits(&self) -> subledger_server::HttpLimits {
        subledger_server::HttpLimits {
            header_read_timeout: Duration::from_millis(self.http_header_timeout_ms),
            body_read_timeout: Duration::from_millis(self.http_body_timeout_ms),
            max_connections: usize::try_from(self.http_max_connections).unwrap_or(usize::MAX),
            drain_timeout: Duration::from_millis(self.http_drain_timeout_ms),
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Serve `GET /metrics` here, without a token, for a Prometheus scraper on a private
    /// network: a worker has no other address.
    #[arg(long, env = "SUBLEDGER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// The plan catalog (YAML): which prices make which plan, what each plan grants.
    #[arg(long, env = "SUBLEDGER_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Publish the catalog file as the version in force when it differs from the newest one
    /// recorded in the store. Without it such a server warns and serves the recorded version,
    /// so servers sharing a store never answer differently because one file was edited.
    #[arg(long, env = "SUBLEDGER_CATALOG_PUBLISH")]
    pub catalog_publish: bool,

    /// How far a webhook signature's timestamp may be from now, either way, in seconds.
    #[arg(
        long,
        env = "SUBLEDGER_SIGNATURE_TOLERANCE_SECS",
        default_value_t = 300
    )]
    pub signature_tolerance_secs: u64,

    /// How long product services may reuse an entitlement answer without asking again, in
    /// seconds (`Cache-Control: max-age`, never past the answer's next grace end). 0: they
    /// revalidate each time with the `ETag`.
    #[arg(long, env = "SUBLEDGER_ANSWER_MAX_AGE_SECS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub answer_max_age_secs: u64,

    /// How long a change that an endpoint of SUBLEDGER_NOTIFY_URLS refuses is retried before
    /// it is given up, in seconds (default three days).
    #[arg(long, env = "SUBLEDGER_NOTIFY_RETRY_FOR_SECS", default_value_t = 259_200, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub notify_retry_for_secs: u64,

    /// How long an endpoint of SUBLEDGER_NOTIFY_URLS has to answer, in seconds.
    #[arg(long, env = "SUBLEDGER_NOTIFY_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub notify_timeout_secs: u64,

    /// How often to look for work written by other processes, in milliseconds.
    #[arg(long, env = "SUBLEDGER_POLL_INTERVAL_MS", default_value_t = 250)]
    pub poll_interval_ms: u64,

    /// How long a worker keeps the inbox rows it claimed, and a notifier the lanes of
    /// SUBLEDGER_NOTIFY_URLS it works, in seconds: a process that dies mid-batch leaves them to
    /// the others after this long (lanes after three notification timeouts more).
    #[arg(long, env = "SUBLEDGER_WORKER_LEASE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub worker_lease_secs: u64,

    /// The longest a worker spends on one row it runs on its own (one that asks Stripe, for
    /// example) before leaving it to be retried, in seconds. Keep it under the lease.
    #[arg(long, env = "SUBLEDGER_WORKER_ROW_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub worker_row_timeout_secs: u64,

    /// How many inbox rows a worker claims at once [default: 64 on SQLite, 256 on PostgreSQL]
    #[arg(long, env = "SUBLEDGER_WORKER_BATCH_SIZE", value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub worker_batch_size: Option<i64>,

    /// How many customers' rows a worker applies at once on PostgreSQL (each customer's in
    /// order). SQLite, with one writer, applies a batch as claimed whatever this says.
    #[arg(long, env = "SUBLEDGER_WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_concurrency: u16,

    /// The longest a PostgreSQL statement may run, and a webhook may wait for its inbox row
    /// to be stored before it is answered 503 (Stripe retries it), in milliseconds.
    #[arg(long, env = "SUBLEDGER_STORE_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub store_timeout_ms: u64,

    /// The customer metadata key holding your product's user id, for /v1/users/{user_id}.
    #[arg(
        long,
        env = "SUBLEDGER_USER_ID_METADATA_KEY",
        default_value = "user_id"
    )]
    pub user_id_metadata_key: String,

    /// Serve Stripe's live mode. Without it the deployment serves test mode; either way,
    /// events of the other mode are stored, recorded as ignored with the reason, and never
    /// applied.
    #[arg(long, env = "SUBLEDGER_LIVEMODE")]
    pub livemode: bool,

    /// The longest one request to Stripe may take, connecting included, in milliseconds; a
    /// request that times out is retried like a network failure.
    #[arg(long, env = "SUBLEDGER_STRIPE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub stripe_timeout_ms: u64,

    /// Stripe's API base URL for the worker's fetches (default: Stripe's own). The key comes
    /// from SUBLEDGER_STRIPE_READ_KEY: a restricted key that may only read customers,
    /// subscriptions and entitlements.
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
}

impl EngineArgs {
    pub fn engine_config(&self, database_url: &str) -> anyhow::Result<EngineConfig> {
        let Some(path) = &self.catalog else {
            bail!("no plan catalog: pass --catalog FILE or set SUBLEDGER_CATALOG (see catalog.example.yaml)");
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the catalog {}", path.display()))?;
        let catalog = Catalog::from_yaml(&path.display().to_string(), &text)?;
        let mut config = EngineConfig::new(database_url, catalog);
        config.webhook_secrets = webhook_secrets()?;
        config.signature_tolerance = Duration::from_secs(self.signature_tolerance_secs);
        config.poll_interval = Duration::from_millis(self.poll_interval_ms.max(1));
        config.worker_lease = Duration::from_secs(self.worker_lease_secs);
        config.worker_batch_size = self.worker_batch_size;
        config.worker_concurrency = usize::from(self.worker_concurrency);
        config.store_timeout = Duration::from_millis(self.store_timeout_ms);
        config.livemode = self.livemode;
        config.worker_row_timeout = Duration::from_secs(self.worker_row_timeout_secs);
        config.answer_max_age = Duration::from_secs(self.answer_max_age_secs);
        config.catalog_publish = self.catalog_publish;
        config.catalog_published_by = publisher();
        config.notify = notify_config(self.notify_retry_for_secs, self.notify_timeout_secs)?.map(
            |mut notify| {
                notify.lease = config.worker_lease;
                notify
            },
        );
        config
            .user_id_metadata_key
            .clone_from(&self.user_id_metadata_key);
        config.stripe_objects = self.stripe_reader()?;
        Ok(config)
    }

    /// The read key and where to reach Stripe, for commands that read the whole account.
    pub fn account_reader(&self, max_requests_per_second: u32) -> anyhow::Result<StripeReader> {
        stripe_reader(
            "customers, subscriptions, subscription schedules, invoices, payment intents, entitlements and events",
            self.stripe_api_base.as_deref(),
            Duration::from_millis(self.stripe_timeout_ms),
            max_requests_per_second,
        )
    }

    /// The worker asks Stripe for a subscription when two of its events from the same second
    /// cannot be ordered; it needs read access only, so it gets its own restricted key.
    fn stripe_reader(&self) -> anyhow::Result<Option<Arc<dyn StripeObjects>>> {
        let Some(key) = read_key()? else {
            return Ok(None);
        };
        let api = StripeApi::new(&ApiKey::new(key), self.stripe_api_base.as_deref(), "worker")
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot set up the Stripe reader (--stripe-api-base / STRIPE_API_BASE): {e}"
                )
            })?
            .with_request_timeout(Duration::from_millis(self.stripe_timeout_ms));
        Ok(Some(Arc::new(api)))
    }
}

/// The webhook secret the README, the Makefile and the simulator use. Anyone can sign with it,
/// so `serve` refuses it on any address but loopback.
pub const DEVELOPMENT_WEBHOOK_SECRET: &str = "whsec_subledger_local_development";

/// A secret from `name`, or from the file `<name>_FILE` names (its contents, without the
/// trailing newline). Both set is an error: which one wins would be a guess.
pub fn secret_var(name: &str) -> anyhow::Result<Option<SecretString>> {
    let file_var = format!("{name}_FILE");
    let direct = std::env::var_os(name);
    let file = std::env::var_os(&file_var);
    match (direct, file) {
        (Some(_), Some(_)) => bail!("{name} and {file_var} are both set: set one of them"),
        (Some(value), None) => match value.into_string() {
            // An empty variable (`KEY=` in an env file) is no secret at all, as it always was.
            Ok(value) if value.trim().is_empty() => Ok(None),
            Ok(value) => Ok(Some(SecretString::from(value))),
            Err(_) => bail!("{name} is not valid UTF-8"),
        },
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{file_var}: reading {}", path.display()))?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() {
                bail!("{file_var}: {} is empty", path.display());
            }
            Ok(Some(SecretString::from(text)))
        }
        (None, None) => Ok(None),
    }
}

/// A reader of the Stripe account with the read key, which must be allowed to read `reads`.
pub fn stripe_reader(
    reads: &str,
    api_base: Option<&str>,
    request_timeout: Duration,
    max_requests_per_second: u32,
) -> anyhow::Result<StripeReader> {
    let key = read_key()?.ok_or_else(|| {
        anyhow::anyhow!("SUBLEDGER_STRIPE_READ_KEY is not set: give a restricted key (rk_…) with read access to {reads}")
    })?;
    let policy = ReadPolicy {
        max_requests_per_second,
        request_timeout,
        ..ReadPolicy::default()
    };
    StripeReader::new(&ApiKey::new(key), api_base, policy).map_err(|e| {
        anyhow::anyhow!(
            "cannot set up the Stripe reader (--stripe-api-base / STRIPE_API_BASE): {e}"
        )
    })
}

/// `SUBLEDGER_STRIPE_READ_KEY`, when set; never printed.
fn read_key() -> anyhow::Result<Option<String>> {
    let Some(key) = secret_var("SUBLEDGER_STRIPE_READ_KEY")? else {
        return Ok(None);
    };
    let key = key.expose_secret();
    if !["rk_", "sk_"].iter().any(|prefix| key.starts_with(prefix)) {
        bail!("SUBLEDGER_STRIPE_READ_KEY does not start with rk_ or sk_ (use a restricted key with read access to customers, subscriptions and entitlements)");
    }
    Ok(Some(key.to_owned()))
}

/// `SUBLEDGER_WEBHOOK_SECRETS`: comma-separated `whsec_…` secrets (two while rotating).
fn webhook_secrets() -> anyhow::Result<Vec<WebhookSecret>> {
    let Some(value) = secret_var("SUBLEDGER_WEBHOOK_SECRETS")? else {
        return Ok(Vec::new());
    };
    let mut secrets = Vec::new();
    for (index, secret) in list(value.expose_secret()).enumerate() {
        if !secret.starts_with("whsec_") {
            // Say which entry, never what it is.
            bail!(
                "SUBLEDGER_WEBHOOK_SECRETS: entry {} does not start with whsec_ (copy the endpoint's signing secret from Stripe)",
                index + 1
            );
        }
        secrets.push(WebhookSecret::new(secret));
    }
    Ok(secrets)
}

/// Who publishes a catalog version from this process, as recorded beside it: the build and
/// the machine (`HOSTNAME`, else `/etc/hostname`).
fn publisher() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unnamed host".to_owned());
    format!(
        "subledger {} on {host} (pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// `SUBLEDGER_NOTIFY_URLS` and `SUBLEDGER_NOTIFY_SECRET` (each comma-separated): where
/// entitlement changes are POSTed, signed with every secret. URLs without a secret are
/// refused (nothing is sent unsigned), as are URLs that are not `https://` (or `http://` to a
/// loopback address) and secrets shorter than 32 characters.
fn notify_config(retry_for_secs: u64, timeout_secs: u64) -> anyhow::Result<Option<NotifyConfig>> {
    let urls: Vec<String> = std::env::var("SUBLEDGER_NOTIFY_URLS")
        .map(|value| list(&value).map(str::to_owned).collect())
        .unwrap_or_default();
    if urls.is_empty() {
        return Ok(None);
    }
    for (index, url) in urls.iter().enumerate() {
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
            .iter()
            .any(|prefix| {
                url.strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
            });
        if !url.starts_with("https://") && !loopback {
            bail!(
                "SUBLEDGER_NOTIFY_URLS: entry {} ({}) must be an https:// URL (http:// only to a loopback address)",
                index + 1,
                subledger_engine::notify::redacted(url)
            );
        }
    }
    let Some(value) = secret_var("SUBLEDGER_NOTIFY_SECRET")? else {
        bail!("SUBLEDGER_NOTIFY_URLS is set but SUBLEDGER_NOTIFY_SECRET is not: notifications are always signed");
    };
    let mut secrets = Vec::new();
    for (index, secret) in list(value.expose_secret()).enumerate() {
        if secret.len() < 32 {
            bail!(
                "SUBLEDGER_NOTIFY_SECRET: entry {} is shorter than 32 characters (e.g. `openssl rand -hex 32`)",
                index + 1
            );
        }
        secrets.push(WebhookSecret::new(secret));
    }
    if secrets.is_empty() {
        bail!("SUBLEDGER_NOTIFY_SECRET is empty: notifications are always signed");
    }
    let mut config = NotifyConfig::new(urls, secrets);
    config.retry_for = Duration::from_secs(retry_for_secs);
    config.timeout = Duration::from_secs(timeout_secs);
    Ok(Some(config))
}

/// `SUBLEDGER_API_TOKENS` (read) and `SUBLEDGER_ADMIN_TOKENS` (admin): comma-separated bearer
/// tokens for `/v1`. A token in both lists is an admin token.
pub fn api_tokens() -> anyhow::Result<ApiTokens> {
    let tokens = |name: &str| -> anyhow::Result<Vec<ApiToken>> {
        let Some(value) = secret_var(name)? else {
            return Ok(Vec::new());
        };
        let tokens: Vec<ApiToken> = list(value.expose_secret())
            .map(|token| ApiToken::new(&SecretString::from(token)))
            .collect();
        if tokens.is_empty() {
            bail!("{name} is set but holds no token");
        }
        Ok(tokens)
    };
    Ok(ApiTokens::new(
        tokens("SUBLEDGER_API_TOKENS")?,
        tokens("SUBLEDGER_ADMIN_TOKENS")?,
    ))
}

/// Refuses to serve, on any address but loopback, what anyone could abuse: webhooks signed
/// with the development secret everyone knows (an event granting any plan), or `/v1` with no
/// token at all unless `allow_unauthenticated` says so.
pub fn check_exposure(
    addr: SocketAddr,
    webhook_secrets: &[WebhookSecret],
    tokens: &ApiTokens,
    allow_unauthenticated: bool,
) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if webhook_secrets
        .iter()
        .any(|secret| secret.is(DEVELOPMENT_WEBHOOK_SECRET))
    {
        bail!("refusing to serve on {addr} with the development webhook secret: anyone can sign events with it. Set SUBLEDGER_WEBHOOK_SECRETS to your endpoint's signing secret from Stripe");
    }
    if tokens.is_empty() && !allow_unauthenticated {
        bail!("refusing to serve /v1 on {addr} without a token: set SUBLEDGER_API_TOKENS (read) and SUBLEDGER_ADMIN_TOKENS (admin), or pass --allow-unauthenticated to open reads to anyone who can reach it");
    }
    Ok(())
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}
