//! The floors every figure is compared with, measured in the same run: what the store itself
//! does with the same rows and nothing of Subledger in the way.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{per_sec, PAYLOAD_BYTES};

/// The same one-row insert of a delivery's size, one connection, for `secs` seconds, on a
/// SQLite file configured as Subledger configures its own: inserts per second, then the p99
/// of one insert sent open-loop at `rate` (from when it was due), the floor of a webhook's
/// acknowledgement at that rate.
pub async fn sqlite_floor(url: &str, secs: u64, rate: f64) -> Result<(f64, Duration)> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use std::str::FromStr;
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = sqlx::SqlitePool::connect_with(options).await?;
    sqlx::query("CREATE TABLE floor (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let payload = "x".repeat(PAYLOAD_BYTES);
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        sqlx::query("INSERT INTO floor (payload) VALUES (?)")
            .bind(&payload)
            .execute(&pool)
            .await?;
        rows += 1;
    }
    let throughput = per_sec(rows, started.elapsed());
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = tokio::time::Instant::now();
    let mut due = started;
    let mut latencies = Vec::new();
    while due.duration_since(started) < Duration::from_secs(secs) {
        tokio::time::sleep_until(due).await;
        sqlx::query("INSERT INTO floor (payload) VALUES (?)")
            .bind(&payload)
            .execute(&pool)
            .await?;
        latencies.push(due.elapsed());
        due += interval;
    }
    pool.close().await;
    Ok((throughput, crate::http_load::quantile(&mut latencies, 0.99)))
}

/// What `pgbench` measured with the same one-row insert.
#[derive(Debug)]
pub struct PgbenchFloors {
    pub one_client: f64,
    pub eight_clients: f64,
    /// One client throttled to a rate (`-R`): the p99 latency from each transaction's
    /// scheduled start.
    pub commit_p99: Duration,
}

/// `pgbench` running the same one-row insert at 1 and at 8 clients (transactions per second),
/// then at one client throttled to `rate` (latency p99).
pub fn pgbench_floors(base_url: &str, secs: u64, rate: f64) -> Result<PgbenchFloors> {
    let table = format!("subledger_bench_floor_{}", std::process::id());
    let psql = |sql: &str| -> Result<()> {
        let status = std::process::Command::new("psql")
            .args([base_url, "-q", "-c", sql])
            .status()
            .context("cannot run psql (install PostgreSQL's client tools)")?;
        if !status.success() {
            bail!("psql failed: {sql}");
        }
        Ok(())
    };
    psql(&format!(
        "CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text NOT NULL)"
    ))?;
    let script = std::env::temp_dir().join(format!("{table}.sql"));
    // The payload is a literal in the statement, so it crosses the connection as a delivery
    // does (`repeat('x', n)` would be made by the server and never sent).
    let payload = "x".repeat(PAYLOAD_BYTES);
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (payload) VALUES ('{payload}');\n"),
    )?;
    let run = |clients: u32| -> Result<f64> {
        let output = std::process::Command::new("pgbench")
            .args(["-n", "-T", &secs.to_string(), "-c", &clients.to_string()])
            .args(["-j", &clients.min(2).to_string(), "-f"])
            .arg(&script)
            .arg(base_url)
            .output()
            .context("cannot run pgbench (install PostgreSQL's contrib tools)")?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix("tps = ")?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .with_context(|| format!("pgbench printed no tps: {text}"))
    };
    let throttled = || -> Result<Duration> {
        let prefix = std::env::temp_dir().join(format!("{table}-log"));
        let status = std::process::Command::new("pgbench")
            .args(["-n", "-T", &secs.to_string(), "-c", "1", "-j", "1"])
            .args(["-R", &format!("{rate:.0}"), "-l", "--log-prefix"])
            .arg(&prefix)
            .arg("-f")
            .arg(&script)
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
    let result = run(1).and_then(|one_client| {
        Ok(PgbenchFloors {
            one_client,
            eight_clients: run(8)?,
            commit_p99: throttled()?,
        })
    });
    let _ = std::fs::remove_file(&script);
    psql(&format!("DROP TABLE {table}"))?;
    result
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
