//! The operators' dashboard, used as a person uses it: headless Chromium (Debian's `chromium`
//! and `chromium-driver`, driven over WebDriver) against a server fed a simulated year of an
//! account's billing, each webhook received when Stripe would have sent it. The test signs in,
//! finds a customer in dunning, reads their entitlements and the timeline picture, reaches
//! "why does this customer lack a feature?" with the keyboard alone, and retries a failing
//! event from the inbox. Each page's screenshot is kept under
//! `target/browser-artefacts/` (or `$SUBLEDGER_ARTEFACTS_DIR`).
//!
//! Without `chromedriver` on the PATH the browser test says so and passes, except in CI
//! (`CI` set), where `.ci/run` installs it and its absence is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{a_year_of_history, catalog, serve, SECRET};
use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use subledger_engine::clock::ManualClock;
use subledger_engine::domain::dunning::DunningState;
use subledger_engine::{Basis, Engine, EngineConfig, WebhookSecret};
use subledger_server::{router, ApiToken, ApiTokens};
use subledger_simulator::Simulator;
use subledger_store::scratch::ScratchDatabase;

const ADMIN_TOKEN: &str = "dashboard-test-admin-token";

/// A customer of [`a_year_of_history`] whose card starts failing in the story's eighth month.
const IN_DUNNING: &str = "cus_00017";

/// How long after Stripe's `created` each webhook arrives: seconds, except a failed payment's
/// news, which comes hours late (as after an outage at the receiver: Stripe retries for days).
fn arrival_delay(event: &Value) -> chrono::Duration {
    if event["type"] == "invoice.payment_failed" {
        chrono::Duration::hours(3)
    } else {
        chrono::Duration::seconds(2)
    }
}

/// An engine on a clock that follows the story: every webhook is signed and received at the
/// moment Stripe would have sent it, so both lanes of the timeline are true to the story.
async fn learned_as_it_happened(
    story: &Simulator,
) -> (Arc<Engine>, Arc<ManualClock>, ScratchDatabase) {
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let mut arrivals: Vec<(DateTime<Utc>, Vec<u8>)> = story
        .events()
        .iter()
        .map(|event| {
            let created = DateTime::from_timestamp(event["created"].as_i64().unwrap(), 0).unwrap();
            (
                created + arrival_delay(event),
                serde_json::to_vec(event).unwrap(),
            )
        })
        .collect();
    arrivals.sort_by_key(|(at, _)| *at);
    let clock = Arc::new(ManualClock::new(arrivals[0].0));
    let mut config = EngineConfig::new(scratch.url.clone(), catalog());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.clock = clock.clone();
    let engine = Engine::start(config).await.unwrap();
    let secret = WebhookSecret::new(SECRET);
    for (at, body) in arrivals {
        clock.set(at.max(engine.now()));
        let signature = secret.header(at.timestamp(), &body);
        engine
            .receive_webhook(Some(&signature), &body, "dashboard-test")
            .await
            .unwrap();
        engine.drain().await.unwrap();
    }
    (engine, clock, scratch)
}

/// The dunning stretches the timeline shades are the ones the answers by Stripe time show: at
/// each stretch's start the customer is in its state, just before it and at its end they are
/// not. A story with customers at every stage of dunning, so the check has something to bite.
#[tokio::test]
async fn dunning_stretches_agree_with_the_answers_at_their_edges() {
    let story = a_year_of_history(36);
    let (engine, _clock, scratch) = learned_as_it_happened(&story).await;
    let customers: Vec<String> = (0..36).map(|i| format!("cus_{i:05}")).collect();
    let mut seen = std::collections::BTreeSet::new();
    for customer in &customers {
        let timeline = engine.timeline(customer).await.unwrap();
        let start = timeline.first().unwrap().occurred_at;
        let spans = engine.dunning_history(customer, &timeline, start);
        let state_at = |at: DateTime<Utc>| {
            let engine = engine.clone();
            async move {
                engine
                    .entitlements_at(customer, at, Basis::Effective)
                    .await
                    .unwrap()
                    .map(|answer| answer.dunning.state)
            }
        };
        for span in &spans {
            seen.insert(span.state.as_str());
            assert_eq!(
                state_at(span.from).await,
                Some(span.state),
                "{customer}: {span:?}"
            );
            let before = state_at(span.from - chrono::Duration::seconds(1)).await;
            assert_ne!(
                before,
                Some(span.state),
                "{customer}: {span:?} began earlier"
            );
            match span.until {
                Some(until) => {
                    assert_ne!(
                        state_at(until).await,
                        Some(span.state),
                        "{customer}: {span:?}"
                    );
                    let last = until - chrono::Duration::seconds(1);
                    assert_eq!(
                        state_at(last).await,
                        Some(span.state),
                        "{customer}: {span:?}"
                    );
                }
                None => {
                    let served = engine.entitlements(customer).unwrap().json().unwrap();
                    let served: Value = serde_json::from_slice(&served).unwrap();
                    assert_eq!(
                        served["dunning"]["state"],
                        span.state.as_str(),
                        "{customer}: {span:?} is said to last until now"
                    );
                }
            }
        }
        // Whatever is not shaded was not dunning.
        if spans.is_empty() {
            for entry in &timeline {
                let state = state_at(entry.occurred_at).await.unwrap();
                assert!(
                    !matches!(state, DunningState::PastDue | DunningState::Suspended),
                    "{customer} was {state:?} at {} but nothing is shaded",
                    entry.occurred_at
                );
            }
        }
    }
    assert!(
        seen.contains("past_due") && seen.contains("suspended"),
        "the story shows both kinds of dunning: {seen:?}"
    );
    scratch.cleanup().await.unwrap();
}

/// `chromedriver`, on a free port, for as long as it is held.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Option<Driver> {
    let program = std::env::var("SUBLEDGER_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&program)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }),
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("{program} is needed in CI (.ci/run installs chromium-driver): {error}")
        }
        Err(error) => {
            eprintln!("skipped: {program} cannot be started ({error}); install chromium-driver");
            None
        }
    }
}

/// A headless Chromium session, retried while the driver starts.
async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({ "args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1280,1000", "--lang=en-US",
        ] }),
    );
    let mut last_error = None;
    for _ in 0..50 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&driver.url)
            .await
        {
            Ok(client) => return client,
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no browser session: {last_error:?}");
}

fn artefacts_dir() -> PathBuf {
    let dir = std::env::var_os("SUBLEDGER_ARTEFACTS_DIR").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
                PathBuf::from,
            );
            target.join("browser-artefacts")
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    std::fs::write(artefacts_dir().join(format!("{name}.png")), png).unwrap();
}

async fn press(client: &Client, key: Key) {
    let key: char = key.into();
    client
        .perform_actions(
            KeyActions::new("keyboard".to_owned())
                .then(KeyAction::Down { value: key })
                .then(KeyAction::Up { value: key }),
        )
        .await
        .unwrap();
}

/// Waits (a click or a key returns before the next page has loaded) for a page whose heading
/// is `heading`.
async fn wait_for_page(client: &Client, heading: &str) {
    let mut seen = String::new();
    for _ in 0..200 {
        if let Ok(h1) = client.find(Locator::Css("h1")).await {
            seen = h1.text().await.unwrap_or_default();
            if seen == heading {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no page headed “{heading}”; the last heading seen was “{seen}”");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_operator_finds_a_customer_asks_why_and_retries_an_event_in_a_real_browser() {
    let Some(driver) = start_driver() else {
        return;
    };
    let story = a_year_of_history(24);
    let (engine, _clock, scratch) = learned_as_it_happened(&story).await;
    // One delivery this build cannot translate: it fails, and waits in the inbox.
    let broken = json!({
        "id": "evt_broken_status", "object": "event", "type": "customer.subscription.created",
        "created": engine.now().timestamp(), "livemode": false, "api_version": "2025-03-31.basil",
        "data": { "object": {
            "id": "sub_broken", "object": "subscription", "customer": "cus_broken",
            "status": "dormant", "created": engine.now().timestamp(),
            "items": { "object": "list", "data": [] }
        } }
    });
    let body = serde_json::to_vec(&broken).unwrap();
    let signature = WebhookSecret::new(SECRET).header(engine.now().timestamp(), &body);
    engine
        .receive_webhook(Some(&signature), &body, "dashboard-test")
        .await
        .unwrap();
    engine.drain().await.unwrap();

    let app = router(
        engine.clone(),
        ApiTokens::new(Vec::new(), vec![ApiToken::new(&ADMIN_TOKEN.into())]),
    );
    // `localhost`: a secure context for Chromium, so the session cookie (`Secure`) is kept.
    let base = format!("http://localhost:{}", serve(app).await.port());
    let client = browser(&driver).await;

    // Signed out: a readable page that leads to the sign-in form.
    client.goto(&format!("{base}/dashboard")).await.unwrap();
    wait_for_page(&client, "Sign in").await;
    client
        .find(Locator::LinkText("Sign in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN_TOKEN)
        .await
        .unwrap();
    client
        .find(Locator::Css("form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_page(&client, "Find a customer").await;
    screenshot(&client, "1-home").await;

    // Find the customer by their product user id (what support is usually given).
    client
        .find(Locator::Id("q"))
        .await
        .unwrap()
        .send_keys(&format!("u_17{}", char::from(Key::Enter)))
        .await
        .unwrap();
    wait_for_page(&client, IN_DUNNING).await;
    let url = client.current_url().await.unwrap();
    assert_eq!(url.path(), format!("/dashboard/customers/{IN_DUNNING}"));
    let served = engine.entitlements(IN_DUNNING).unwrap();
    let answer: Value = serde_json::from_slice(&served.json().unwrap()).unwrap();
    let summary = text_of(&client, "main > p").await;
    let dunning = answer["dunning"]["state"].as_str().unwrap();
    assert!(
        summary.contains(&format!("Dunning: {dunning}")),
        "{summary}"
    );
    // The entitlements table says what the API says, feature by feature.
    let rows = client
        .find_all(Locator::Css("#entitlements tbody tr"))
        .await
        .unwrap();
    let features = answer["features"].as_object().unwrap();
    assert_eq!(rows.len(), features.len());
    for row in rows {
        let cells = row.find_all(Locator::Css("td")).await.unwrap();
        let name = cells[0].text().await.unwrap();
        let enabled = features[&name]["enabled"].as_bool().unwrap();
        assert_eq!(
            cells[1].text().await.unwrap(),
            if enabled { "yes" } else { "no" },
            "{name}"
        );
    }

    // The picture: one mark per fact, dunning shaded, late news drawn slanted.
    let timeline = engine.timeline(IN_DUNNING).await.unwrap();
    let marks = client.find_all(Locator::Css("svg g.mark")).await.unwrap();
    assert_eq!(marks.len(), timeline.len());
    let shaded = client
        .find_all(Locator::Css(
            "svg rect.shade-past_due, svg rect.shade-suspended",
        ))
        .await
        .unwrap();
    assert!(
        !shaded.is_empty(),
        "a customer in dunning has shaded stretches"
    );
    let mut slanted = 0;
    for mark in &marks {
        let line = mark.find(Locator::Css("line")).await.unwrap();
        let (x1, x2) = (
            line.attr("x1").await.unwrap(),
            line.attr("x2").await.unwrap(),
        );
        if x1 != x2 {
            slanted += 1;
        }
    }
    let late = timeline
        .iter()
        .filter(|e| e.stripe_event_type.as_deref() == Some("invoice.payment_failed"))
        .count();
    assert!(
        late > 0 && slanted >= late,
        "{late} late facts, {slanted} slanted lines"
    );
    let picture_size = client
        .find(Locator::Css("figure.timeline svg"))
        .await
        .unwrap()
        .rectangle()
        .await
        .unwrap();
    assert!(
        picture_size.2 > 600.0 && picture_size.3 > 100.0,
        "drawn at {picture_size:?}"
    );
    screenshot(&client, "2-customer").await;

    // With the keyboard alone: Tab to the first "Why lacks …?" link, Enter.
    let lacking = features
        .iter()
        .find(|(_, value)| value["enabled"] == json!(false))
        .map(|(name, _)| name.clone())
        .expect("a customer in dunning lacks a feature");
    let wanted = format!("Why lacks {lacking}?");
    let mut reached = Vec::new();
    for _ in 0..80 {
        press(&client, Key::Tab).await;
        let focused = client.active_element().await.unwrap().text().await.unwrap();
        if focused == wanted {
            break;
        }
        reached.push(focused);
    }
    assert_eq!(
        reached.first().map(String::as_str),
        Some("Skip to the page's content")
    );
    press(&client, Key::Enter).await;
    wait_for_page(&client, &format!("Why {IN_DUNNING} lacks {lacking}")).await;
    let url = client.current_url().await.unwrap();
    assert_eq!(
        url.path(),
        format!("/dashboard/customers/{IN_DUNNING}/features/{lacking}"),
        "reached by Tab: {reached:?}"
    );
    let explanation = text_of(&client, "main").await;
    let expected = engine
        .explain(IN_DUNNING, &lacking, None)
        .await
        .unwrap()
        .unwrap();
    for blocker in &expected.blockers {
        assert!(
            explanation.contains(&blocker.detail),
            "{explanation}\nmisses {blocker:?}"
        );
    }
    assert!(
        !expected.blockers.is_empty() || explanation.contains("No plan"),
        "{explanation}"
    );
    screenshot(&client, "3-explain").await;

    // The inbox: the failing event, retried on demand, tried again by the worker.
    client
        .find(Locator::LinkText("Inbox"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_page(&client, "Inbox").await;
    let failing_row = "//tr[td/a[text()='evt_broken_status']]";
    let attempts = |client: Client| async move {
        client
            .find(Locator::XPath(&format!("{failing_row}/td[3]")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    assert_eq!(attempts(client.clone()).await, "1");
    let error = text_of(&client, "main table tbody tr td:nth-child(5)").await;
    assert!(error.contains("cannot translate"), "{error}");
    screenshot(&client, "4-inbox").await;
    client
        .find(Locator::XPath(&format!("{failing_row}//button")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Due now (not in a minute, as its backoff said): the next pass of the worker tries it.
    let mut tried = 0;
    for _ in 0..200 {
        tried = engine.process_inbox().await.unwrap().handled();
        if tried > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tried, 1, "the retry made the event due");
    assert_eq!(
        client.current_url().await.unwrap().path(),
        "/dashboard/inbox"
    );
    client
        .goto(&format!("{base}/dashboard/inbox"))
        .await
        .unwrap();
    wait_for_page(&client, "Inbox").await;
    assert_eq!(attempts(client.clone()).await, "2");

    client.close().await.unwrap();
    scratch.cleanup().await.unwrap();
}
