//! The `--stripe` runner's calls, tested against the simulator's REST API: async-stripe talks
//! to the simulated Stripe over HTTP, which forwards signed webhooks to a running Subledger.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use subledger_engine::{Engine, EngineConfig, Shutdown, WebhookSecret};
use subledger_scenario::format::{parse, parse_file};
use subledger_scenario::live::{run_live, LiveOptions};
use subledger_simulator::api::{router as stripe_router, Account, Forwarding};
use subledger_simulator::delivery::Target;
use subledger_simulator::RetryPolicy;
use subledger_stripe_client::{ApiKey, StripeApi};
use tokio::net::TcpListener;

const SECRET: &str = "whsec_live_runner_test";
/// The admin token of the Subledger the live runner checks (it places and lifts holds).
const LIVE_ADMIN_TOKEN: &str = "sl_admin_live_runner";

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, app)
}

fn serve_on(listener: TcpListener, app: axum::Router) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn scenarios_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios")
}

/// A running Subledger (engine, worker, projector) and a simulated Stripe forwarding to it,
/// which is also where the worker fetches what the events cannot order.
async fn setup(catalog: subledger_domain::catalog::Catalog, namespace: &str) -> LiveOptions {
    let engine_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forwarding = Forwarding {
        target: Target::Http {
            addr: engine_listener.local_addr().unwrap(),
            path: "/webhooks/stripe".to_owned(),
        },
        secret: WebhookSecret::new(SECRET),
    };
    let account = Account::new(chrono::Utc::now(), RetryPolicy::default(), Some(forwarding));
    let stripe_base = format!("http://{}/", serve(stripe_router(account.shared())).await);
    let api = StripeApi::new(
        &ApiKey::new("sk_test_live_runner"),
        Some(&stripe_base),
        namespace,
    )
    .unwrap();
    let reader =
        StripeApi::new(&ApiKey::new("rk_test_worker"), Some(&stripe_base), "worker").unwrap();

    let mut config = EngineConfig::new("sqlite::memory:", catalog);
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.poll_interval = Duration::from_millis(10);
    config.stripe_objects = Some(std::sync::Arc::new(reader));
    let engine = Engine::start(config).await.unwrap();
    let (stop, shutdown) = Shutdown::new();
    engine.spawn_worker(shutdown.clone());
    engine.spawn_projector(shutdown);
    std::mem::forget(stop);
    let engine_addr = serve_on(
        engine_listener,
        subledger_server::router(
            engine,
            subledger_server::ApiTokens::new(
                Vec::new(),
                vec![subledger_server::ApiToken::new(&LIVE_ADMIN_TOKEN.into())],
            ),
        ),
    );
    LiveOptions {
        api,
        engine: engine_addr,
        // Scenarios place and lift holds: an admin token.
        engine_token: Some(LIVE_ADMIN_TOKEN.to_owned()),
        settle_timeout: Duration::from_secs(10),
        clock_timeout: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_files_run_through_async_stripe_against_the_simulated_api() {
    let files = [
        "card-visa.yaml",
        "card-3ds-abandoned.yaml",
        "trial-to-active.yaml",
        "trial-without-payment-method.yaml",
        "trial-paused-then-resumed.yaml",
        "renewal-failure-recovery.yaml",
        "retries-exhausted-canceled.yaml",
        "cancel-at-period-end.yaml",
        "cancel-undone.yaml",
        "pause-collection.yaml",
        "two-subscriptions.yaml",
        "year-of-renewals.yaml",
        "upgrade-now-downgrade-at-period-end.yaml",
        "schedule-completes-or-is-released.yaml",
        "pending-update-not-a-debt.yaml",
        "cancel-at-date-and-holds.yaml",
        "grants-beyond-the-plan.yaml",
        "customer-deleted.yaml",
    ];
    let mut failures = Vec::new();
    for file in files {
        let scenario = parse_file(&scenarios_dir().join(file)).unwrap();
        let options = setup(scenario.catalog.clone(), file).await;
        let report = run_live(&scenario, &options).await;
        if !report.passed() {
            failures.push(report.render());
        }
        if file == "year-of-renewals.yaml" {
            // Twelve months in advances of at most two monthly intervals each (a month-end
            // start makes one step shorter: Jul 31 + 2 months is Sep 30).
            assert!((6..=8).contains(&report.advances), "{}", report.render());
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_customer_gets_a_second_clock_and_both_clocks_advance() {
    let dir = scenarios_dir();
    let mut text = String::from(
        "name: four customers\nstart: 2026-01-01T00:00:00Z\ncatalog: catalogs/standard.yaml\n\
         prices:\n  - { id: price_pro_monthly, amount: 2900, lookup_key: pro_monthly }\nsteps:\n",
    );
    for n in 1..=4 {
        text.push_str(&format!(
            "  - create_customer: {{ id: cus_{n}, card: pm_card_visa }}\n  - subscribe: {{ customer: cus_{n}, subscription: sub_{n}, price: price_pro_monthly }}\n"
        ));
    }
    // The renewal is charged an hour after the period ends.
    text.push_str("  - advance: 1 month 1 hour\n");
    for n in 1..=4 {
        text.push_str(&format!(
            "  - expect:\n      customer: cus_{n}\n      subscriptions: {{ sub_{n}: active }}\n      invoices: {{ sub_{n}: [paid, paid] }}\n"
        ));
    }
    let scenario = parse(&dir.join("four-customers.yaml"), &text).unwrap();
    let options = setup(scenario.catalog.clone(), "four-customers").await;
    let report = run_live(&scenario, &options).await;
    assert!(report.passed(), "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_stripes_api_cannot_drive_fail_with_a_reason() {
    let scenario = parse_file(&scenarios_dir().join("dispute-lost.yaml")).unwrap();
    let options = setup(scenario.catalog.clone(), "dispute").await;
    let report = run_live(&scenario, &options).await;
    assert!(!report.passed());
    assert!(
        report.render().contains("cannot open or settle a dispute"),
        "{}",
        report.render()
    );
}
