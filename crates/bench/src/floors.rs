//! The floors every figure is compared with, measured in the same run: what the store itself
//! does with the same rows and nothing of Subledger in the way.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{per_sec, PAYLOAD_BYTES};

/// The columns Subledger's inbox INSERT sets (`subledger_store`'s inbox), in order.
const INBOX_COLUMNS: &str = "event_id, event_type, api_version, livemode, account, \
     stripe_created, payload, received_at_ms, correlation_id, available_at_ms, ordering_key";

/// What the store does with one delivery's row, one connection at a time.
///
/// Ingest is compared with "the same one-row insert" (issue 11): Subledger's own inbox
/// INSERT, with a real delivery's bytes, into a table made by Subledger's migrations (the
/// same columns, indexes and `ON CONFLICT`), sent by the store's own client with nothing of
/// Subledger in the way. A bare insert of as many bytes into a two-column table is measured
/// beside it: what the inbox's schema and a real payload cost over the cheapest insert. The
/// inbox's insert at full speed is [`InboxFloor`], measured in rounds beside ingest's.
#[derive(Debug)]
pub struct InsertFloors {
    /// The bare insert: `id` and a payload of `x`s, inserts per second.
    pub bare: f64,
    /// The inbox's insert sent open-loop at a rate: its p99 from when each was due, the
    /// floor of a webhook's acknowledgement at that rate.
    pub inbox_p99: Duration,
}

/// [`InsertFloors`] on a SQLite file opened as Subledger opens its own, for `secs` seconds
/// each, the open-loop one at `rate`: the store's own connection (WAL, `synchronous = FULL`,
/// one connection) with its checkpoints beside the writer, not inside its commits. With
/// SQLite's automatic checkpoints every thousandth page's commit would pay one; with none
/// the WAL only grows, and a commit that appends to a file syncs more than one that rewrites
/// a WAL checkpoints keep short. Either would measure a store set up otherwise than
/// Subledger's.
pub async fn sqlite_floors(
    url: &str,
    secs: u64,
    rate: f64,
    delivery: &str,
) -> Result<InsertFloors> {
    let store = subledger_store::Database::connect(url).await?;
    store.migrate().await?;
    let subledger_store::Database::Sqlite(pool) = &store else {
        anyhow::bail!("{url} is not a SQLite file");
    };
    let pool = pool.clone();
    sqlx::query("CREATE TABLE floor (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = "x".repeat(PAYLOAD_BYTES);
    let bare = per_second_for(secs, |_| {
        sqlx::query("INSERT INTO floor (payload) VALUES (?)")
            .bind(&payload)
            .execute(&pool)
    })
    .await?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = tokio::time::Instant::now();
    let mut due = started;
    let mut latencies = Vec::new();
    // Rows of their own: a conflict would skip the insert and flatter the floor.
    let mut n = 1 << 40;
    while due.duration_since(started) < Duration::from_secs(secs) {
        tokio::time::sleep_until(due).await;
        sqlite_inbox_row(&pool, delivery, n).await?;
        latencies.push(due.elapsed());
        due += interval;
        n += 1;
    }
    store.close().await;
    Ok(InsertFloors {
        bare,
        inbox_p99: crate::http_load::quantile(&mut latencies, 0.99),
    })
}

/// Subledger's inbox INSERT on SQLite.
static SQLITE_INBOX_INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO inbox ({INBOX_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )
});

/// Subledger's inbox INSERT of `delivery` as row `n`, on SQLite.
async fn sqlite_inbox_row(
    pool: &sqlx::SqlitePool,
    delivery: &str,
    n: u64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&SQLITE_INBOX_INSERT)
        .bind(format!("evt_floor{n}"))
        .bind("customer.subscription.created")
        .bind("2024-06-20")
        .bind(false)
        .bind(None::<String>)
        .bind(1_767_225_600_i64)
        .bind(delivery)
        .bind(1_767_225_600_000_i64)
        .bind(format!("floor-{n}"))
        .bind(1_767_225_600_000_i64)
        .bind(format!("cus_floor{n}"))
        .fetch_all(pool)
        .await?;
    Ok(())
}

/// Subledger's own inbox INSERT of a delivery, one connection at a time, as fast as it goes:
/// ingest's floor ([`InsertFloors`] says why this statement). Measured in rounds that
/// alternate with ingest's own, so that each pair meets the shared machine's disk in the same
/// mood: one floor taken minutes away from its figure swung that ratio between 0.21× and
/// 1.30× in runs of the same build.
pub enum InboxFloor {
    /// On a SQLite file of its own, opened as Subledger opens its store.
    Sqlite {
        store: subledger_store::Database,
        /// `store`'s own pool.
        pool: sqlx::SqlitePool,
        delivery: String,
        rounds: u64,
    },
    /// `pgbench` at one client, on a copy of a scratch schema's inbox (made at the first
    /// round, once the engine has migrated the schema).
    Pgbench {
        base_url: String,
        schema: String,
        delivery: String,
        script: Option<std::path::PathBuf>,
    },
}

impl InboxFloor {
    /// The floor on a new SQLite file at `url`.
    pub async fn sqlite(url: &str, delivery: &str) -> Result<Self> {
        let store = subledger_store::Database::connect(url).await?;
        store.migrate().await?;
        let subledger_store::Database::Sqlite(pool) = &store else {
            bail!("{url} is not a SQLite file");
        };
        let pool = pool.clone();
        Ok(Self::Sqlite {
            store,
            pool,
            delivery: delivery.to_owned(),
            rounds: 0,
        })
    }

    /// The floor on a copy of `schema`'s inbox in the PostgreSQL database at `base_url`.
    pub fn pgbench(base_url: &str, schema: &str, delivery: &str) -> Self {
        Self::Pgbench {
            base_url: base_url.to_owned(),
            schema: schema.to_owned(),
            delivery: delivery.to_owned(),
            script: None,
        }
    }

    /// One round of `secs` seconds: inserts per second.
    pub async fn per_second(&mut self, secs: u64) -> Result<f64> {
        match self {
            Self::Sqlite {
                pool,
                delivery,
                rounds,
                ..
            } => {
                // Rows of their own in every round: a conflict would skip the insert.
                *rounds += 1;
                let first = *rounds << 32;
                per_second_for(secs, |n| sqlite_inbox_row(pool, delivery, first + n)).await
            }
            Self::Pgbench {
                base_url,
                schema,
                delivery,
                script,
            } => {
                let script = match script {
                    Some(script) => script.clone(),
                    None => {
                        let table = inbox_copy_name();
                        psql(
                            base_url,
                            &format!("CREATE TABLE {table} (LIKE {schema}.inbox INCLUDING ALL)"),
                        )?;
                        let path = std::env::temp_dir().join(format!("{table}.sql"));
                        std::fs::write(&path, pgbench_inbox_script(&table, delivery))?;
                        script.insert(path).clone()
                    }
                };
                // Off the runtime: the engine's own tasks run beside the floor, as they do
                // beside ingest.
                let base_url = base_url.clone();
                tokio::task::spawn_blocking(move || pgbench_tps(&base_url, &script, 1, secs))
                    .await?
            }
        }
    }

    /// Removes what the floor made.
    pub async fn close(self) -> Result<()> {
        match self {
            Self::Sqlite { store, .. } => store.close().await,
            Self::Pgbench {
                base_url, script, ..
            } => {
                if let Some(script) = script {
                    let _ = std::fs::remove_file(&script);
                    psql(&base_url, &format!("DROP TABLE {}", inbox_copy_name()))?;
                }
            }
        }
        Ok(())
    }
}

/// The name of [`InboxFloor`]'s copy of the inbox on PostgreSQL.
fn inbox_copy_name() -> String {
    format!("subledger_bench_inbox_floor_{}", std::process::id())
}

/// Runs `insert(n)` for n = 0, 1, … one after another for `secs` seconds: per second.
async fn per_second_for<T, E, Fut>(secs: u64, mut insert: impl FnMut(u64) -> Fut) -> Result<f64>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        insert(rows).await?;
        rows += 1;
    }
    Ok(per_sec(rows, started.elapsed()))
}

/// What `pgbench` measured.
#[derive(Debug)]
pub struct PgbenchFloors {
    /// The bare insert at 1 client, and the inbox's insert open-loop at 1 client.
    pub one_client: InsertFloors,
    /// The bare insert at 8 clients (the worker's concurrency).
    pub eight_clients: f64,
}

/// `pgbench` running the bare insert at 1 and at 8 clients, and the inbox's insert (into a
/// copy of `schema`'s inbox, with its indexes) at 1 client throttled to `rate` (see
/// [`InsertFloors`]).
pub fn pgbench_floors(
    base_url: &str,
    schema: &str,
    secs: u64,
    rate: f64,
    delivery: &str,
) -> Result<PgbenchFloors> {
    let table = format!("subledger_bench_floor_{}", std::process::id());
    let inbox = format!("{table}_inbox");
    psql(
        base_url,
        &format!("CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text NOT NULL)"),
    )?;
    psql(
        base_url,
        &format!("CREATE TABLE {inbox} (LIKE {schema}.inbox INCLUDING ALL)"),
    )?;
    let bare_script = std::env::temp_dir().join(format!("{table}.sql"));
    let inbox_script = std::env::temp_dir().join(format!("{inbox}.sql"));
    // The payload is a literal in the statement, so it crosses the connection as a delivery
    // does (`repeat('x', n)` would be made by the server and never sent).
    let payload = "x".repeat(PAYLOAD_BYTES);
    std::fs::write(
        &bare_script,
        format!("INSERT INTO {table} (payload) VALUES ('{payload}');\n"),
    )?;
    std::fs::write(&inbox_script, pgbench_inbox_script(&inbox, delivery))?;
    let throttled = |script: &std::path::Path| -> Result<Duration> {
        let prefix = std::env::temp_dir().join(format!("{table}-log"));
        let status = std::process::Command::new("pgbench")
            .args(["-n", "-T", &secs.to_string(), "-c", "1", "-j", "1"])
            .args(["-R", &format!("{rate:.0}"), "-l", "--log-prefix"])
            .arg(&prefix)
            .arg("-f")
            .arg(script)
            .arg(base_url)
            .stdout(std::process::Stdio::null())
            .status()
            .context("cannot run pgbench")?;
        if !status.success() {
            bail!("pgbench -R failed");
        }
        // One log file per thread, `<prefix>.<pid>`: "client transaction latency_us …".
        let mut latencies = Vec::new();
        let dir = std::env::temp_dir();
        let stem = format!("{table}-log.");
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.starts_with(&stem) {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            let _ = std::fs::remove_file(&path);
            latencies.extend(text.lines().filter_map(|line| {
                let micros = line.split_whitespace().nth(2)?.parse::<u64>().ok()?;
                Some(Duration::from_micros(micros))
            }));
        }
        if latencies.is_empty() {
            bail!("pgbench -l wrote no transactions");
        }
        Ok(crate::http_load::quantile(&mut latencies, 0.99))
    };
    let result = (|| {
        Ok(PgbenchFloors {
            one_client: InsertFloors {
                bare: pgbench_tps(base_url, &bare_script, 1, secs)?,
                inbox_p99: throttled(&inbox_script)?,
            },
            eight_clients: pgbench_tps(base_url, &bare_script, 8, secs)?,
        })
    })();
    let _ = std::fs::remove_file(&bare_script);
    let _ = std::fs::remove_file(&inbox_script);
    psql(base_url, &format!("DROP TABLE {table}, {inbox}"))?;
    result
}

/// Runs one statement through `psql`.
fn psql(base_url: &str, sql: &str) -> Result<()> {
    let status = std::process::Command::new("psql")
        .args([base_url, "-q", "-c", sql])
        .status()
        .context("cannot run psql (install PostgreSQL's client tools)")?;
    if !status.success() {
        bail!("psql failed: {sql}");
    }
    Ok(())
}

/// A pgbench script of Subledger's inbox INSERT of `delivery` into `table`, each row its own.
fn pgbench_inbox_script(table: &str, delivery: &str) -> String {
    // pgbench leaves `:name` alone unless it names one of its variables, and the delivery's
    // JSON names none of `floor_row`.
    let delivery = delivery.replace('\'', "''").replace('\n', " ");
    format!(
        "\\set floor_row random(1, 1000000000000)\n\
         INSERT INTO {table} ({INBOX_COLUMNS}) VALUES ('evt_floor' || :floor_row, \
         'customer.subscription.created', '2024-06-20', false, NULL, 1767225600, \
         '{delivery}', 1767225600000, 'floor-' || :floor_row, 1767225600000, \
         'cus_floor' || :floor_row) ON CONFLICT (event_id) DO NOTHING RETURNING event_id;\n"
    )
}

/// `pgbench` running `script` at `clients` clients for `secs` seconds: transactions per second.
fn pgbench_tps(base_url: &str, script: &std::path::Path, clients: u32, secs: u64) -> Result<f64> {
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
        .args(["-j", &clients.min(2).to_string(), "-f"])
        .arg(script)
        .arg(base_url)
        .output()
        .context("cannot run pgbench (install PostgreSQL's contrib tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .with_context(|| {
            format!(
                "pgbench printed no tps: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// PostgreSQL's `COPY (SELECT * FROM events) TO STDOUT` of the scratch schema's log, through
/// `psql` to nowhere: events per second, the floor of a rebuild that reads the whole log.
pub fn copy_events(base_url: &str, schema: &str, events: u64) -> Result<f64> {
    let started = Instant::now();
    let output = std::process::Command::new("psql")
        .args([base_url, "-q", "-c"])
        .arg(format!("COPY (SELECT * FROM {schema}.events) TO STDOUT"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run psql (install PostgreSQL's client tools)")?;
    if !output.success() {
        bail!("psql could not COPY the events of {schema}");
    }
    Ok(per_sec(events, started.elapsed()))
}

/// Every stored column of every row of SQLite's log, in log order, read through sqlx (SQLite
/// has no `COPY`): events per second.
pub async fn read_sqlite_events(url: &str) -> Result<f64> {
    use sqlx::Row;
    let pool = sqlx::SqlitePool::connect(url).await?;
    let started = Instant::now();
    let rows = sqlx::query(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
         metadata, position FROM events ORDER BY position",
    )
    .fetch_all(&pool)
    .await?;
    let mut bytes = 0usize;
    for row in &rows {
        bytes += row.try_get::<String, _>("payload")?.len();
    }
    let rate = per_sec(rows.len(), started.elapsed());
    pool.close().await;
    if bytes == 0 {
        bail!("the SQLite log read back empty");
    }
    Ok(rate)
}
