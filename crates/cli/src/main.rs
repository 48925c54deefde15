//! `subledger`: the one binary. `serve` runs the HTTP API with the worker and projector,
//! `worker` runs the inbox worker alone, `migrate` applies the database migrations.

mod config;
mod scenarios;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use subledger_engine::{Engine, Shutdown};
use subledger_store::Database;
use tokio::net::TcpListener;

use crate::config::{Cli, Command, LogFormat, ScenarioCommand, ServeArgs, WorkerArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("subledger: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("subledger: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let database_url = cli
        .database_url
        .clone()
        .unwrap_or_else(|| Database::DEFAULT_URL.to_owned());
    match cli.command {
        Command::Serve(args) => serve(&database_url, args).await,
        Command::Worker(args) => worker(&database_url, args).await,
        Command::Scenario(ScenarioCommand::Run(args)) => {
            scenarios::run(args, cli.database_url).await
        }
        Command::Migrate => {
            let db = Database::connect(&database_url)
                .await
                .context("connecting to the database")?;
            db.migrate().await.context("migrating")?;
            tracing::info!(backend = ?db.backend(), "migrations applied");
            db.close().await;
            Ok(())
        }
    }
}

async fn serve(database_url: &str, args: ServeArgs) -> anyhow::Result<()> {
    let config = args.engine.engine_config(database_url)?;
    if config.webhook_secrets.is_empty() {
        tracing::warn!("SUBLEDGER_WEBHOOK_SECRETS is not set: webhooks will be refused with 500");
    }
    let api_tokens = config::api_tokens();
    if api_tokens.is_empty() {
        tracing::warn!("SUBLEDGER_API_TOKENS is not set: /v1 is open to anyone who can reach it");
    }
    let engine = Engine::start(config).await.context("starting the engine")?;
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = vec![engine.spawn_projector(shutdown.clone())];
    if !args.no_worker {
        tasks.push(engine.spawn_worker(shutdown.clone()));
    }
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, backend = ?engine.backend(), worker = !args.no_worker, "subledger serving");
    let app = subledger_server::router(Arc::clone(&engine), api_tokens);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    engine.close().await;
    tracing::info!("subledger stopped");
    Ok(())
}

async fn worker(database_url: &str, args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.engine.engine_config(database_url)?;
    let engine = Engine::start(config).await.context("starting the engine")?;
    let (stop, shutdown) = Shutdown::new();
    // The projector runs here too, so saved read models stay current without a server.
    let tasks = [
        engine.spawn_worker(shutdown.clone()),
        engine.spawn_projector(shutdown),
    ];
    tracing::info!(backend = ?engine.backend(), "subledger worker running");
    shutdown_signal().await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    engine.close().await;
    tracing::info!("subledger worker stopped");
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
