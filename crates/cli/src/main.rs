//! `subledger`: the one binary. `serve` runs the HTTP API with the worker and projector,
//! `worker` runs the inbox worker alone, `migrate` applies the database migrations.

mod config;
mod operator;
mod progress;
mod scenarios;
mod supervise;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use subledger_engine::{Engine, Shutdown};
use subledger_store::Database;
use tokio::net::TcpListener;

use crate::config::{
    CatalogCommand, Cli, Command, LogFormat, ScenarioCommand, ServeArgs, SimulatorCommand,
    SimulatorServeArgs, WorkerArgs,
};
use crate::supervise::BackgroundTasks;

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
    let failure = ExitCode::from(cli.command.failure_status());
    match runtime.block_on(run(cli)) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("subledger: error: {error:#}");
            failure
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let database_url = cli
        .database_url
        .clone()
        .unwrap_or_else(|| Database::DEFAULT_URL.to_owned());
    let done = |result: anyhow::Result<()>| result.map(|()| ExitCode::SUCCESS);
    match cli.command {
        Command::Serve(args) => done(serve(&database_url, args).await),
        Command::Worker(args) => done(worker(&database_url, args).await),
        Command::Simulator(SimulatorCommand::Serve(args)) => done(simulator_serve(args).await),
        Command::Scenario(ScenarioCommand::Run(args)) => {
            done(scenarios::run(args, cli.database_url).await)
        }
        Command::Backfill(args) => operator::backfill(&database_url, args).await,
        Command::Reconcile(args) => operator::reconcile(&database_url, args).await,
        Command::Replay(args) => operator::replay(&database_url, args).await,
        Command::Inbox(command) => operator::inbox(&database_url, command).await,
        Command::Catalog(CatalogCommand::Check(args)) => operator::check_catalog(&args).await,
        Command::Migrate => {
            let db = Database::connect(&database_url)
                .await
                .context("connecting to the database")?;
            db.migrate().await.context("migrating")?;
            tracing::info!(backend = ?db.backend(), "migrations applied");
            db.close().await;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn serve(database_url: &str, args: ServeArgs) -> anyhow::Result<()> {
    let config = args.engine.engine_config(database_url)?;
    if config.webhook_secrets.is_empty() {
        tracing::warn!("SUBLEDGER_WEBHOOK_SECRETS is not set: webhooks will be refused with 500");
    }
    let api_tokens = config::api_tokens()?;
    config::check_exposure(
        args.addr,
        &config.webhook_secrets,
        &api_tokens,
        args.allow_unauthenticated,
    )?;
    if api_tokens.is_empty() {
        tracing::warn!("no API token is set: /v1 reads are open to anyone who can reach {}, and holds are refused (set SUBLEDGER_API_TOKENS and SUBLEDGER_ADMIN_TOKENS)", args.addr);
    }
    // Recording starts before the engine does, so nothing it counts is lost.
    subledger_server::metrics::install();
    let engine = Engine::start(config).await.context("starting the engine")?;
    let (stop, shutdown) = Shutdown::new();
    let mut tasks = BackgroundTasks::default();
    tasks.add("projector", engine.spawn_projector(shutdown.clone()));
    serve_metrics(args.metrics_addr, &engine).await?;
    if !args.no_worker {
        tasks.add("inbox worker", engine.spawn_worker(shutdown.clone()));
    }
    if let Some(notifier) = engine.spawn_notifier(shutdown.clone()) {
        tasks.add("notifier", notifier);
    }
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, backend = ?engine.backend(), worker = !args.no_worker, "subledger serving");
    let app = subledger_server::router(Arc::clone(&engine), api_tokens);
    let server = subledger_server::serve(listener, app, args.http_limits(), shutdown_signal());
    tokio::select! {
        () = server => {}
        failure = tasks.first_to_end() => return Err(failure),
    }
    let _ = stop.send(true);
    tasks.finish().await;
    engine.close().await;
    tracing::info!("subledger stopped");
    Ok(())
}

/// `GET /metrics`, open, on `addr` when one is given (`--metrics-addr`), until SIGTERM.
async fn serve_metrics(addr: Option<SocketAddr>, engine: &Arc<Engine>) -> anyhow::Result<()> {
    let Some(addr) = addr else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))?;
    tracing::info!(%addr, "metrics served without a token at /metrics");
    let metrics = subledger_server::metrics_router(Arc::clone(engine));
    tokio::spawn(subledger_server::serve(
        listener,
        metrics,
        subledger_server::HttpLimits::default(),
        shutdown_signal(),
    ));
    Ok(())
}

async fn worker(database_url: &str, args: WorkerArgs) -> anyhow::Result<()> {
    let config = args.engine.engine_config(database_url)?;
    subledger_server::metrics::install();
    let engine = Engine::start(config).await.context("starting the engine")?;
    serve_metrics(args.metrics_addr, &engine).await?;
    let (stop, shutdown) = Shutdown::new();
    // The projector runs here too, so saved read models stay current without a server.
    let mut tasks = BackgroundTasks::default();
    tasks.add("inbox worker", engine.spawn_worker(shutdown.clone()));
    if let Some(notifier) = engine.spawn_notifier(shutdown.clone()) {
        tasks.add("notifier", notifier);
    }
    tasks.add("projector", engine.spawn_projector(shutdown));
    tracing::info!(backend = ?engine.backend(), "subledger worker running");
    tokio::select! {
        () = shutdown_signal() => {}
        failure = tasks.first_to_end() => return Err(failure),
    }
    let _ = stop.send(true);
    tasks.finish().await;
    engine.close().await;
    tracing::info!("subledger worker stopped");
    Ok(())
}

async fn simulator_serve(args: SimulatorServeArgs) -> anyhow::Result<()> {
    use subledger_simulator::api::{router, Account, Forwarding};
    use subledger_simulator::delivery::Target;
    if !args.webhook_secret.starts_with("whsec_") {
        anyhow::bail!("--webhook-secret must start with whsec_");
    }
    let forwarding = match &args.forward_to {
        None => None,
        Some(url) => {
            let (addr, path) = parse_http_url(url)?;
            Some(Forwarding {
                target: Target::Http { addr, path },
                secret: subledger_engine::WebhookSecret::new(args.webhook_secret.clone()),
            })
        }
    };
    let account = Account::new(chrono::Utc::now(), Default::default(), forwarding);
    let listener = TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("binding {}", args.addr))?;
    tracing::info!(addr = %args.addr, forward_to = ?args.forward_to, "Stripe simulator serving");
    axum::serve(listener, router(account.shared()))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    Ok(())
}

/// `http://host:port/path` to a socket address and a path (loopback use; no TLS, no DNS
/// beyond what the standard library resolves).
fn parse_http_url(url: &str) -> anyhow::Result<(std::net::SocketAddr, String)> {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--forward-to must be an http:// URL, not {url}"))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("--forward-to: cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("--forward-to: no address for {authority}"))?;
    Ok((addr, format!("/{path}")))
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
