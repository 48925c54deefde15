//! The floors every figure is compared with, measured in the same run: what the store itself
//! does with the same rows and nothing of Subledger in the way.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{per_sec, PAYLOAD_BYTES};

/// The same one-row insert of a delivery's size, one connection, for `secs` seconds, on a
/// SQLite file configured as Subledger configures its own.
pub async fn sqlite_floor(url: &str, secs: u64) -> Result<f64> {
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
    let rate = per_sec(rows, started.elapsed());
    pool.close().await;
    Ok(rate)
}

/// `pgbench` running the same one-row insert at 1 and at 8 clients: transactions per second.
pub fn pgbench_floors(base_url: &str, secs: u64) -> Result<(f64, f64)> {
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
    std::fs::write(
        &script,
        format!("INSERT INTO {table} (payload) VALUES (repeat('x', {PAYLOAD_BYTES}));\n"),
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
    let result = run(1).and_then(|one| run(8).map(|eight| (one, eight)));
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
