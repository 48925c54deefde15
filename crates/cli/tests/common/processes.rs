//! What the tests that kill `subledger` processes share: a burst of a few simulated months of a
//! Stripe account, Stripe's way of delivering it (again until acknowledged), a seedable choice
//! of victims, and processes that can be killed with SIGKILL and started again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Months};
use serde_json::Value;
use subledger_engine::WebhookSecret;
use subledger_simulator::delivery::http_request;
use subledger_simulator::model::Interval;
use subledger_simulator::{RetryPolicy, Simulator};

pub const SECRET: &str = "whsec_crash_harness";
pub const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { api_calls: 1000 }\n  basic:\n    prices: [price_basic]\n    features: { api_calls: 10000 }\n  pro:\n    prices: [price_pro]\n    features: { sso: true, api_calls: 100000 }\n";
const CUSTOMERS: usize = 16;
const MONTHS: u32 = 4;

/// A small, seedable generator: the same seed gives the same kills.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// A seed from `SUBLEDGER_CRASH_SEED`, or a new one.
pub fn seed() -> u64 {
    std::env::var("SUBLEDGER_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| u64::from(chrono::Utc::now().timestamp_subsec_nanos()))
}

/// A few months of a Stripe account: sign-ups, renewals paid and failed (with retries and
/// dunning), upgrades and cancellations, as the simulator emits them.
pub fn burst() -> Vec<Value> {
    let start = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let mut sim = Simulator::new(start, RetryPolicy::default());
    sim.create_price("price_basic", 900, "usd", Interval::Month, Some("basic"))
        .unwrap();
    sim.create_price("price_pro", 2900, "usd", Interval::Month, Some("pro"))
        .unwrap();
    for c in 0..CUSTOMERS {
        let customer = format!("cus_crash{c}");
        sim.create_customer(&customer, BTreeMap::new()).unwrap();
        sim.attach_card(&customer, "pm_card_visa").unwrap();
        let price = if c % 2 == 0 {
            "price_basic"
        } else {
            "price_pro"
        };
        sim.subscribe(&customer, &format!("sub_crash{c}"), price, 1, None)
            .unwrap();
    }
    for month in 0..MONTHS {
        for c in 0..CUSTOMERS {
            let (customer, subscription) = (format!("cus_crash{c}"), format!("sub_crash{c}"));
            match (c % 4, month) {
                (0, 1) => sim
                    .change_price_now(&subscription, "price_pro", "create_prorations")
                    .unwrap(),
                (1, 1) => {
                    sim.attach_card(&customer, "pm_card_chargeCustomerFail")
                        .unwrap();
                }
                (2, 2) => sim.cancel_at_period_end(&subscription).unwrap(),
                _ => {}
            }
        }
        sim.advance_to(start.checked_add_months(Months::new(month + 1)).unwrap())
            .unwrap();
    }
    sim.take_new_events()
}

pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Delivers one event to whichever of `addrs` answers until Subledger acknowledges it, as
/// Stripe does: a refused connection, a reset or a 503 is tried again (on the next address);
/// anything else but 200 is a defect. Returns how many attempts it took.
pub async fn deliver(addrs: &[SocketAddr], event: &Value) -> usize {
    let id = event["id"].as_str().unwrap().to_owned();
    let body = serde_json::to_vec(event).unwrap();
    let mut attempts = 0;
    loop {
        let addr = addrs[attempts % addrs.len()];
        attempts += 1;
        let header = WebhookSecret::new(SECRET).header(chrono::Utc::now().timestamp(), &body);
        let headers = [
            ("Stripe-Signature", header.as_str()),
            ("Content-Type", "application/json"),
        ];
        match http_request(addr, "POST", "/webhooks/stripe", &headers, &body).await {
            Ok((200, _)) => return attempts,
            Ok((503, _)) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok((status, answer)) => panic!("event {id} answered {status}: {answer}"),
        }
    }
}

/// One `subledger` process, started again with the same command line after each kill.
pub struct Process {
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Child,
}

impl Process {
    pub fn start(args: Vec<String>, env: Vec<(String, String)>) -> Self {
        let child = Self::spawn(&args, &env);
        Self { args, env, child }
    }

    fn spawn(args: &[String], env: &[(String, String)]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_subledger"));
        command
            .args(args)
            .env_remove("SUBLEDGER_API_TOKENS")
            .env_remove("SUBLEDGER_ADMIN_TOKENS")
            .env_remove("SUBLEDGER_NOTIFY_URLS")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command.spawn().unwrap()
    }

    /// `kill -9`, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9` and start again.
    pub fn crash_and_restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.args, &self.env);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
