//! The operator commands as a user runs them: `backfill`, `reconcile`, `replay` and `inbox`
//! against a simulated Stripe account served over HTTP, and `catalog check` on files,
//! checking what they print and their exit statuses (0 done, 1 differences or problems found,
//! 2 error).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use subledger_simulator::api::{router, Account};
use subledger_simulator::model::Interval;
use subledger_simulator::{RetryPolicy, Simulator};

fn scenarios_catalog() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/catalogs/standard.yaml")
}

/// An account with two paying customers, served over loopback HTTP.
async fn account() -> String {
    let start = chrono::Utc::now() - chrono::Duration::days(40);
    let mut sim = Simulator::new(start, RetryPolicy::default());
    sim.create_price(
        "price_pro",
        2900,
        "usd",
        Interval::Month,
        Some("pro_monthly"),
    )
    .unwrap();
    for n in 1..=2 {
        let id = format!("cus_{n}");
        sim.create_customer(&id, BTreeMap::new()).unwrap();
        sim.attach_card(&id, "pm_card_visa").unwrap();
        sim.subscribe(&id, &format!("sub_{n}"), "price_pro", 1, None)
            .unwrap();
    }
    sim.advance_by(chrono::Duration::days(35)).unwrap();
    let mut account = Account::with_default_clock(sim, RetryPolicy::default(), None);
    account.mark_all_undelivered();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(account.shared()))
            .await
            .unwrap()
    });
    format!("http://{addr}/")
}

/// `subledger <args>` on `database`, with the read key unless `key` is `None`.
async fn subledger(database: &Path, stripe: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_subledger"));
    command
        .args(args)
        .env(
            "SUBLEDGER_DATABASE_URL",
            format!("sqlite://{}", database.display()),
        )
        .env("SUBLEDGER_CATALOG", scenarios_catalog())
        .env("STRIPE_API_BASE", stripe)
        .env_remove("SUBLEDGER_STRIPE_READ_KEY");
    if let Some(key) = key {
        command.env("SUBLEDGER_STRIPE_READ_KEY", key);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_report_work_and_problems_with_their_exit_statuses() {
    let stripe = account().await;
    let dir = std::env::temp_dir().join(format!("subledger-operator-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("subledger.db");
    let _ = std::fs::remove_file(&database);
    let key = Some("rk_test_operator");

    // Bad input: exit 2, with the problem named.
    let out = subledger(&database, &stripe, None, &["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("SUBLEDGER_STRIPE_READ_KEY is not set"),
        "{}",
        text(&out)
    );
    let out = subledger(
        &database,
        &stripe,
        key,
        &["backfill", "--since", "2026-13-45"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not a date"), "{}", text(&out));
    let out = subledger(
        &database,
        &stripe,
        key,
        &["backfill", "--account", "cus_not_an_account"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`cus_not_an_account` is not a Stripe account id"),
        "{}",
        text(&out)
    );
    let out = subledger(
        &database,
        &stripe,
        key,
        &["backfill", "--customer", "cus_nobody"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`cus_nobody` is not known to Stripe"),
        "{}",
        text(&out)
    );
    let out = subledger(&database, &stripe, Some("rk_live_refused"), &["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("refused the API key"), "{}", text(&out));

    // Nothing recorded yet: every customer and subscription is missed (exit 1, as diff).
    let report = dir.join("report.json");
    let report_arg = report.display().to_string();
    let out = subledger(
        &database,
        &stripe,
        key,
        &["reconcile", "--json", &report_arg],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let drifts: Vec<&str> = json["differences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["drift"].as_str())
        .collect();
    assert!(
        drifts.iter().all(|d| *d == "missed_by_subledger"),
        "{drifts:?}"
    );
    assert_eq!(
        drifts.len(),
        4,
        "two customers and their subscriptions: {json}"
    );

    let out = subledger(&database, &stripe, key, &["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("objects read"), "{}", text(&out));
    let out = subledger(
        &database,
        &stripe,
        key,
        &["reconcile", "--customer", "cus_nobody"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("`cus_nobody` is known neither"),
        "{}",
        text(&out)
    );
    let out = subledger(&database, &stripe, key, &["reconcile"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("0 differences"), "{}", text(&out));

    for args in [&["replay", "--verify"][..], &["replay"], &["inbox", "list"]] {
        let out = subledger(&database, &stripe, None, args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out));
    }
    let out = subledger(&database, &stripe, None, &["inbox", "retry", "evt_unknown"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not in the inbox: evt_unknown"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn catalog_check_lists_every_problem_with_its_line() {
    let check = |file: &Path| {
        Command::new(env!("CARGO_BIN_EXE_subledger"))
            .args(["catalog", "check"])
            .arg(file)
            .env_remove("SUBLEDGER_CATALOG")
            .output()
            .unwrap()
    };
    // Every shipped catalog is valid, and the check names what it holds.
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../catalog.example.yaml");
    for file in [shipped, scenarios_catalog()] {
        let output = check(&file);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        assert!(text(&output).contains(": valid: "), "{}", text(&output));
    }

    let dir = std::env::temp_dir().join(format!("subledger-catalog-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("catalog.yaml");
    std::fs::write(
        &broken,
        "default_plan: free\nplans:\n  free:\n    features: { seats: -1 }\n  pro:\n    \
         prices: [pro_monthly]\n    features: { sso: maybe }\n    colour: blue\n  team:\n    \
         prices: [pro_monthly]\n",
    )
    .unwrap();
    let output = check(&broken);
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    let name = broken.display().to_string();
    for expected in [
        format!("{name}:4: feature `seats` of plan `free`"),
        format!("{name}:7: feature `sso` of plan `pro`"),
        format!("{name}:8: unknown key `colour` in plan `pro`"),
        format!("{name}:10: price `pro_monthly` is listed by both plan `pro` and plan `team`"),
        format!("{name}: 4 problems"),
    ] {
        assert!(printed.contains(&expected), "{expected:?} in {printed}");
    }

    // A file that cannot be read is an error, not a verdict.
    let output = check(&dir.join("missing.yaml"));
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("cannot read the catalog file"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_check_with_stripe_finds_prices_the_catalog_names_and_those_it_does_not() {
    // The account has one price: price_pro, lookup key pro_monthly.
    let stripe = account().await;
    let dir = std::env::temp_dir().join(format!("subledger-catalog-stripe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("unused.db");
    let check = |file: &Path| {
        let file = file.display().to_string();
        let (database, stripe) = (database.clone(), stripe.clone());
        async move {
            subledger(
                &database,
                &stripe,
                Some("rk_test_catalog"),
                &["catalog", "check", &file, "--stripe"],
            )
            .await
        }
    };

    // The scenarios' catalog names prices this account does not have.
    let output = check(&scenarios_catalog()).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(1), "{printed}");
    assert!(printed.contains("plan `team` names `team_monthly`, which is neither a price id nor a lookup key at Stripe"), "{printed}");
    assert!(!printed.contains("names `pro_monthly`, which"), "{printed}");

    // One that names only what the account has passes, and lists what it leaves out.
    let only_free = dir.join("free-only.yaml");
    std::fs::write(
        &only_free,
        "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n",
    )
    .unwrap();
    let output = check(&only_free).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(
            "no plan names (their subscriptions get the default plan): price_pro (pro_monthly)"
        ),
        "{printed}"
    );
    let pro = dir.join("pro.yaml");
    std::fs::write(&pro, "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n  pro:\n    prices: [pro_monthly]\n    features: { seats: 10 }\n").unwrap();
    let output = check(&pro).await;
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("every price the catalog names is at Stripe (1 price listed there)"),
        "{printed}"
    );

    // Without the read key it is an error, not a verdict.
    let output = subledger(
        &database,
        &stripe,
        None,
        &["catalog", "check", &pro.display().to_string(), "--stripe"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("SUBLEDGER_STRIPE_READ_KEY is not set"),
        "{}",
        text(&output)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
