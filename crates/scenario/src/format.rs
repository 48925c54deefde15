//! The scenario file format.
//!
//! ```yaml
//! name: Renewal fails, Stripe retries, the customer recovers
//! start: 2026-01-01T00:00:00Z
//! catalog: catalogs/standard.yaml          # relative to this file
//! retry_policy: { retry_after_days: [3, 7, 14, 21], when_exhausted: cancel }   # optional;
//!                                          # when_exhausted: cancel|unpaid|past_due|pause
//! prices:   # `features`: Stripe Entitlements API features of the price's product (optional)
//!   - { id: price_pro_monthly, amount: 2000, interval: month, lookup_key: pro_monthly }
//! steps:
//!   - create_customer: { id: cus_alice, card: pm_card_visa, metadata: { user_id: u_1 } }
//!   - create_customer: { id: cus_bob, account: acct_1Shop }   # a connected account's customer
//!   - subscribe: { customer: cus_alice, subscription: sub_alice, price: price_pro_monthly }
//!   - change_card: { customer: cus_alice, card: pm_card_chargeCustomerFail }
//!   - advance: 1 month                     # N second|minute|hour|day|week|month|year[s],
//!                                          # or several: `1 month 2 hours`
//!   - advance_to: 2026-03-01T00:00:00Z
//!   - expect:
//!       customer: cus_alice
//!       subscriptions: { sub_alice: past_due }   # as Subledger reports them
//!       plans: [pro]
//!       features: { sso: true, seats: 10, audit_log: false }
//!       dunning: { state: past_due, attempt: 1 }   # or just `dunning: past_due`
//!       scheduled: { sub_alice: cancel }           # cancel | plan_change | none
//!       user: u_1                                  # this user id finds the customer
//!       stripe: { sub_alice: past_due }          # as the simulated Stripe has them
//!       invoices: { sub_alice: [paid, open] }    # oldest first
//! ```
//!
//! Other steps: `upgrade` (`subscription`, `price`, `proration`: always_invoice |
//! create_prorations | none), `downgrade` (at period end, by a subscription schedule),
//! `release_schedule` (`subscription`: drops a change not made yet), `cancel` (`at_period_end`),
//! `undo_cancel`, `delete_customer` (`id`), `pause` (`behavior`: collection), `resume`
//! (collection), `resume_subscription` (a `paused` one), `pay_invoice` (the newest open one),
//! `complete_3ds`, `abandon_3ds`,
//! `open_dispute` (`customer`), `close_dispute` (`customer`, `outcome`: won | lost),
//! `order` (`id`, `customer`, `amount`, `currency`, `card`), `pay_order` (`id`, `card`),
//! `complete_order_3ds`, `cancel_order`, `refund_order`.
//!
//! As at Stripe, the declining test cards cannot be attached (`card:` on `create_customer` or
//! `change_card` fails the step); their story happens when the client confirms:
//!
//! ```yaml
//!   - subscribe: { customer: cus_x, subscription: sub_x, price: price_pro_monthly,
//!                  payment_behavior: default_incomplete }   # or allow_incomplete (default),
//!                                                           # error_if_incomplete
//!   - confirm: { subscription: sub_x, card: pm_card_chargeDeclined }
//!   - subscribe: { customer: cus_y, subscription: sub_y, price: price_pro_monthly, trial_days: 7,
//!                  missing_payment_method: pause }          # or create_invoice (default), cancel
//!   - upgrade: { subscription: sub_x, price: price_team_monthly, proration: always_invoice,
//!                payment_behavior: pending_if_incomplete }  # applies only once paid
//! ```
//!
//! Operators' holds and grants, through Subledger's API (they happen at the story's time):
//!
//! ```yaml
//!   - place_hold: { customer: cus_x, id: hold_1, reason: review }   # `subscription`: only that
//!                                             # one; `covers_grants: true`: grants too
//!   - lift_hold: { customer: cus_x, id: hold_1 }
//!   - grant: { customer: cus_x, id: g_1, feature: seats, limit: 5, mode: add,  # or enabled:
//!              expires_at: 2026-02-01T00:00:00Z, reason: outage }            # true|false, set
//!   - revoke_grant: { customer: cus_x, id: g_1 }
//!   - expect: { customer: cus_x, grants: [g_1], features: { seats: 15 } }  # grants that count
//! ```
//!
//! The catalog changing during the story, as an operator publishes a new version (a restart
//! with `--catalog-publish`, at the story's time), and what is in force:
//!
//! ```yaml
//!   - publish_catalog: catalogs/pro-more-seats.yaml      # relative to this file
//!   - expect_catalog: { versions: 2, in_force: catalogs/pro-more-seats.yaml }
//! ```
//!
//! Drift, and the operator commands that learn what was missed:
//!
//! ```yaml
//!   - webhooks: off                 # events made now are not delivered (listed by Stripe
//!   - webhooks: on                  #   with delivery_success=false); `on` resumes delivery
//!   - silently: { delete_customer: { id: cus_x } }   # any Stripe step, with no event at all
//!   - backfill: {}                  # `subledger backfill` against the simulated account
//!   - backfill: { account: acct_1 } # … reading a connected account (`--account`)
//!   - reconcile:                    # `subledger reconcile`; `apply: true` heals
//!       apply: true
//!       expect: { sub_x: stale_at_subledger, sub_x/invoice: dunning, cus_y: deleted_at_stripe }
//! ```
//!
//! `expect` under `reconcile` lists every difference it must report, exactly (an invoice is
//! named after its subscription). A story with `webhooks: off` or `silently` is also told with
//! every webhook delivered and nothing silent; at the end every customer must answer the same.
//! Every problem is reported with the file and line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, Node, Span};
use subledger_domain::catalog::Catalog;
use subledger_simulator::model::{Interval, MissingPaymentMethod, PaymentBehavior};
use subledger_simulator::{RetryPolicy, WhenRetriesRunOut};

#[derive(Debug, Clone)]
pub struct Scenario {
    pub path: PathBuf,
    pub name: String,
    pub start: DateTime<Utc>,
    pub catalog: Catalog,
    pub retry_policy: RetryPolicy,
    pub prices: Vec<PriceSpec>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceSpec {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub interval: Interval,
    pub lookup_key: Option<String>,
    /// Stripe Entitlements API features (lookup keys) of the price's product.
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub line: usize,
    pub action: Action,
}

/// How far to move the clock: calendar months first, then seconds (`1 month 1 hour`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockStep {
    pub months: u32,
    pub seconds: i64,
}

impl ClockStep {
    /// Where the clock lands when it moves this far from `now`.
    pub fn from(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        now.checked_add_months(chrono::Months::new(self.months))?
            .checked_add_signed(chrono::Duration::try_seconds(self.seconds)?)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateCustomer {
        id: String,
        /// The connected account the customer belongs to (`None`: the platform's own).
        account: Option<String>,
        card: Option<String>,
        metadata: BTreeMap<String, String>,
    },
    ChangeCard {
        customer: String,
        card: String,
    },
    Subscribe {
        customer: String,
        subscription: String,
        price: String,
        quantity: u64,
        trial_days: Option<u32>,
        payment_behavior: PaymentBehavior,
        missing_payment_method: MissingPaymentMethod,
    },
    /// The client confirms the first payment with a test card (Stripe.js).
    Confirm {
        subscription: String,
        card: String,
    },
    /// `POST /v1/subscriptions/{id}/resume` of a paused subscription.
    ResumeSubscription {
        subscription: String,
    },
    /// `POST /v1/invoices/{id}/pay` on the subscription's newest open invoice.
    PayInvoice {
        subscription: String,
    },
    Advance(ClockStep),
    AdvanceTo(DateTime<Utc>),
    Upgrade {
        subscription: String,
        price: String,
        proration: String,
        /// `payment_behavior: pending_if_incomplete`: the change waits for its invoice.
        pending_if_incomplete: bool,
    },
    Downgrade {
        subscription: String,
        price: String,
    },
    Cancel {
        subscription: String,
        at_period_end: bool,
    },
    CancelAt {
        subscription: String,
        at: DateTime<Utc>,
    },
    /// `POST /v1/subscription_schedules/{id}/release` of the schedule managing it.
    ReleaseSchedule {
        subscription: String,
    },
    UndoCancel {
        subscription: String,
    },
    /// Stripe deletes the customer, canceling its subscriptions.
    DeleteCustomer {
        id: String,
    },
    /// An operator's hold, through Subledger's own API (not Stripe).
    PlaceHold {
        customer: String,
        id: String,
        subscription: Option<String>,
        reason: String,
        /// A customer-wide hold that takes the customer's grants away too.
        covers_grants: bool,
    },
    LiftHold {
        customer: String,
        id: String,
    },
    /// An operator's grant, through Subledger's own API: `enabled` or `limit`, `set` or `add`.
    Grant {
        customer: String,
        id: String,
        feature: String,
        value: subledger_domain::grants::GrantValue,
        mode: subledger_domain::grants::GrantMode,
        subscription: Option<String>,
        starts_at: Option<DateTime<Utc>>,
        expires_at: Option<DateTime<Utc>>,
        reason: String,
    },
    RevokeGrant {
        customer: String,
        id: String,
    },
    Pause {
        subscription: String,
        behavior: String,
    },
    Resume {
        subscription: String,
    },
    Complete3ds {
        subscription: String,
    },
    Abandon3ds {
        subscription: String,
    },
    OpenDispute {
        customer: String,
    },
    CloseDispute {
        customer: String,
        outcome: String,
    },
    /// A one-off order, confirmed with `card` (a test card the customer types) or else the
    /// customer's default card.
    Order {
        id: String,
        customer: String,
        amount: i64,
        currency: String,
        card: Option<String>,
    },
    /// `pay_order` (with an optional `card`), `complete_order_3ds`, `cancel_order`,
    /// `refund_order`.
    OrderAction {
        action: OrderAction,
        id: String,
        card: Option<String>,
    },
    /// Webhook delivery switched off or back on (`webhooks: off` | `webhooks: on`): events
    /// made while it is off are never delivered, and Stripe lists them with
    /// `delivery_success=false`.
    Webhooks {
        on: bool,
    },
    /// A Stripe-side step that no event will ever tell (`silently: { cancel: { … } }`).
    Silently(Box<Action>),
    /// `subledger backfill` against the simulated account.
    Backfill {
        /// The connected account to read (`None`: the platform's own).
        account: Option<String>,
    },
    /// `subledger reconcile`: `apply` heals; `expect` lists every difference it must report,
    /// exactly, as object id → drift class.
    Reconcile {
        apply: bool,
        expect: BTreeMap<String, String>,
    },
    Expect(Expectation),
    /// An operator publishes a new catalog version: Subledger restarts with this file and
    /// `--catalog-publish`, at the story's time.
    PublishCatalog(Box<Catalog>),
    /// The catalog versions recorded, and the one in force (its content version).
    ExpectCatalog {
        versions: Option<usize>,
        in_force: Option<(String, String)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderAction {
    Pay,
    Complete3ds,
    Cancel,
    Refund,
}

impl OrderAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pay => "pay_order",
            Self::Complete3ds => "complete_order_3ds",
            Self::Cancel => "cancel_order",
            Self::Refund => "refund_order",
        }
    }
}

impl Action {
    /// Whether the step changes Stripe's objects (and so can happen without an event).
    pub fn happens_at_stripe(&self) -> bool {
        !matches!(
            self,
            Self::PlaceHold { .. }
                | Self::LiftHold { .. }
                | Self::Grant { .. }
                | Self::RevokeGrant { .. }
                | Self::Webhooks { .. }
                | Self::Silently(_)
                | Self::Backfill { .. }
                | Self::Reconcile { .. }
                | Self::Expect(_)
                | Self::PublishCatalog(_)
                | Self::ExpectCatalog { .. }
        )
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Self::CreateCustomer { id, card, .. } => match card {
                Some(card) => format!("create_customer {id} with {card}"),
                None => format!("create_customer {id}"),
            },
            Self::ChangeCard { customer, card } => format!("change_card {customer} to {card}"),
            Self::Subscribe {
                subscription,
                price,
                trial_days,
                ..
            } => match trial_days {
                Some(days) => {
                    format!("subscribe {subscription} to {price} with a {days}-day trial")
                }
                None => format!("subscribe {subscription} to {price}"),
            },
            Self::Advance(ClockStep { months, seconds }) => match (months, seconds) {
                (0, seconds) => format!("advance {seconds} s"),
                (months, 0) => format!("advance {months} month(s)"),
                (months, seconds) => format!("advance {months} month(s) {seconds} s"),
            },
            Self::AdvanceTo(t) => format!("advance to {}", t.to_rfc3339()),
            Self::Upgrade {
                subscription,
                price,
                proration,
                pending_if_incomplete,
            } => {
                let pending = if *pending_if_incomplete {
                    ", pending if incomplete"
                } else {
                    ""
                };
                format!("upgrade {subscription} to {price} ({proration}{pending})")
            }
            Self::Downgrade {
                subscription,
                price,
            } => {
                format!("downgrade {subscription} to {price} at period end")
            }
            Self::Cancel {
                subscription,
                at_period_end,
            } => {
                if *at_period_end {
                    format!("cancel {subscription} at period end")
                } else {
                    format!("cancel {subscription} now")
                }
            }
            Self::CancelAt { subscription, at } => {
                format!("cancel {subscription} at {}", at.to_rfc3339())
            }
            Self::UndoCancel { subscription } => format!("undo_cancel {subscription}"),
            Self::ReleaseSchedule { subscription } => {
                format!("release the schedule of {subscription}")
            }
            Self::DeleteCustomer { id } => format!("delete_customer {id}"),
            Self::PlaceHold { customer, id, .. } => format!("place hold {id} on {customer}"),
            Self::LiftHold { customer, id } => format!("lift hold {id} on {customer}"),
            Self::Grant {
                customer,
                id,
                feature,
                ..
            } => format!("grant {id} of {feature} to {customer}"),
            Self::RevokeGrant { customer, id } => format!("revoke grant {id} of {customer}"),
            Self::Pause {
                subscription,
                behavior,
            } => format!("pause collection of {subscription} ({behavior})"),
            Self::Resume { subscription } => format!("resume collection of {subscription}"),
            Self::Complete3ds { subscription } => format!("complete 3-D Secure for {subscription}"),
            Self::Confirm { subscription, card } => {
                format!("confirm {subscription}'s first payment with {card}")
            }
            Self::ResumeSubscription { subscription } => format!("resume paused {subscription}"),
            Self::PayInvoice { subscription } => format!("pay {subscription}'s open invoice"),
            Self::Abandon3ds { subscription } => format!("abandon 3-D Secure for {subscription}"),
            Self::OpenDispute { customer } => format!("open a dispute for {customer}"),
            Self::CloseDispute { customer, outcome } => {
                format!("close {customer}'s dispute as {outcome}")
            }
            Self::Order {
                id,
                amount,
                currency,
                ..
            } => format!("order {id} for {amount} {currency}"),
            Self::OrderAction { action, id, .. } => format!("{} {id}", action.as_str()),
            Self::Webhooks { on } => format!("webhooks {}", if *on { "on" } else { "off" }),
            Self::Silently(action) => format!("silently (no event): {}", action.describe()),
            Self::Backfill { account: None } => "backfill".to_owned(),
            Self::Backfill {
                account: Some(account),
            } => format!("backfill {account}"),
            Self::Reconcile { apply, .. } => {
                if *apply {
                    "reconcile --apply".to_owned()
                } else {
                    "reconcile".to_owned()
                }
            }
            Self::Expect(_) => "expect".to_owned(),
            Self::PublishCatalog(catalog) => format!("publish catalog {}", catalog.source()),
            Self::ExpectCatalog { .. } => "expect catalog".to_owned(),
        }
    }
}

/// A feature's expected value: `true`/`false` for on/off, a number for an enabled limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureExpectation {
    Enabled(bool),
    Limit(u64),
}

/// The customer's expected dunning view: its state, and optionally the failed attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningExpectation {
    pub state: String,
    pub attempt: Option<u32>,
}

/// An order's expected state, and optionally its decline code and the message shown to the
/// customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderExpectation {
    pub state: String,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expectation {
    pub customer: Option<String>,
    pub orders: BTreeMap<String, OrderExpectation>,
    /// The change scheduled for each subscription: `cancel`, `plan_change` or `none`.
    pub scheduled: BTreeMap<String, String>,
    /// The product user id (customer metadata) that should find `customer`.
    pub user: Option<String>,
    pub dunning: Option<DunningExpectation>,
    pub subscriptions: BTreeMap<String, String>,
    pub plans: Option<Vec<String>>,
    /// The ids of the operators' grants that count in the answer, in its order.
    pub grants: Option<Vec<String>>,
    pub features: BTreeMap<String, FeatureExpectation>,
    pub stripe: BTreeMap<String, String>,
    pub invoices: BTreeMap<String, Vec<String>>,
}

/// A scenario file that cannot be used: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// The scenario files directly inside `dir` (`*.yaml`, `*.yml`), sorted.
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Reads and checks a scenario file (and the catalog it names).
pub fn parse_file(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// Parses scenario `text` that came from `path` (used for messages and relative catalogs).
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    let reader = Reader {
        file: path.display().to_string(),
    };
    let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, options)
        .map_err(|e| reader.load_error(&e))?;
    let root = reader.mapping(&root, "the scenario")?;
    reader.only_keys(
        root,
        "the scenario",
        &[
            "name",
            "start",
            "catalog",
            "retry_policy",
            "prices",
            "steps",
        ],
    )?;

    let name = reader.required_str(root, "name")?.to_owned();
    let start_node = reader.required(root, "start")?;
    let start = reader.time(start_node)?;
    let catalog_node = reader.required(root, "catalog")?;
    let (catalog, _) = reader.catalog(catalog_node, "`catalog` (a path to a catalog file)")?;

    let retry_policy = match root.get_node("retry_policy") {
        None => RetryPolicy::default(),
        Some(node) => reader.retry_policy(node)?,
    };
    let mut prices = Vec::new();
    if let Some(node) = root.get_node("prices") {
        let list = node
            .as_sequence()
            .ok_or_else(|| reader.error(node.span(), "`prices` must be a list"))?;
        for price in list.iter() {
            prices.push(reader.price(price)?);
        }
    }
    let steps_node = reader.required(root, "steps")?;
    let steps_list = steps_node
        .as_sequence()
        .ok_or_else(|| reader.error(steps_node.span(), "`steps` must be a list"))?;
    let mut steps = Vec::new();
    for step in steps_list.iter() {
        steps.push(reader.step(step)?);
    }
    if steps.is_empty() {
        return Err(reader.error(steps_node.span(), "`steps` is empty"));
    }
    Ok(Scenario {
        path: path.to_owned(),
        name,
        start,
        catalog,
        retry_policy,
        prices,
        steps,
    })
}

struct Reader {
    /// The scenario file: messages name it, and catalogs are found relative to it.
    file: String,
}

impl Reader {
    /// The catalog file `node` names (relative to the scenario file), parsed, with its text.
    fn catalog(&self, node: &Node, what: &str) -> Result<(Catalog, String), ScenarioError> {
        let relative = self.scalar(node, what)?;
        let path = Path::new(&self.file)
            .parent()
            .unwrap_or(Path::new("."))
            .join(relative.as_str());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            self.error(
                node.span(),
                format!("cannot read catalog {}: {e}", path.display()),
            )
        })?;
        let catalog =
            Catalog::from_yaml(&path.display().to_string(), &text).map_err(|e| ScenarioError {
                file: e.source,
                line: e.line,
                message: e.message,
            })?;
        Ok((catalog, text))
    }

    fn error(&self, span: &Span, message: impl Into<String>) -> ScenarioError {
        ScenarioError {
            file: self.file.clone(),
            line: span.start().map(|m| m.line()),
            message: message.into(),
        }
    }

    fn load_error(&self, error: &LoadError) -> ScenarioError {
        let (line, message) = subledger_domain::catalog::describe_load_error(error);
        ScenarioError {
            file: self.file.clone(),
            line,
            message,
        }
    }

    fn mapping<'n>(
        &self,
        node: &'n Node,
        what: &str,
    ) -> Result<&'n MarkedMappingNode, ScenarioError> {
        node.as_mapping()
            .ok_or_else(|| self.error(node.span(), format!("{what} must be a mapping")))
    }

    fn only_keys(
        &self,
        map: &MarkedMappingNode,
        what: &str,
        allowed: &[&str],
    ) -> Result<(), ScenarioError> {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in {what} (expected one of: {})",
                        key.as_str(),
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn required<'n>(
        &self,
        map: &'n MarkedMappingNode,
        key: &str,
    ) -> Result<&'n Node, ScenarioError> {
        map.get_node(key)
            .ok_or_else(|| self.error(map.span(), format!("missing `{key}`")))
    }

    fn scalar<'n>(
        &self,
        node: &'n Node,
        what: &str,
    ) -> Result<&'n MarkedScalarNode, ScenarioError> {
        node.as_scalar()
            .filter(|s| !s.as_str().is_empty())
            .ok_or_else(|| self.error(node.span(), format!("{what} must be a value")))
    }

    fn required_str<'n>(
        &self,
        map: &'n MarkedMappingNode,
        key: &str,
    ) -> Result<&'n str, ScenarioError> {
        let node = self.required(map, key)?;
        Ok(self.scalar(node, &format!("`{key}`"))?.as_str())
    }

    /// An optional `account`: a Stripe Connect account id.
    fn account(&self, map: &MarkedMappingNode) -> Result<Option<String>, ScenarioError> {
        let account = self.optional_str(map, "account")?;
        if let (Some(account), Some(node)) = (&account, map.get_node("account")) {
            if !subledger_domain::ids::is_account_id(account) {
                return Err(self.error(
                    node.span(),
                    format!("`account` must be a Stripe account id (acct_…), not `{account}`"),
                ));
            }
        }
        Ok(account)
    }

    fn optional_str(
        &self,
        map: &MarkedMappingNode,
        key: &str,
    ) -> Result<Option<String>, ScenarioError> {
        map.get_node(key)
            .map(|node| {
                self.scalar(node, &format!("`{key}`"))
                    .map(|s| s.as_str().to_owned())
            })
            .transpose()
    }

    fn number<T: std::str::FromStr>(&self, node: &Node, what: &str) -> Result<T, ScenarioError> {
        self.scalar(node, what)?
            .as_str()
            .parse::<T>()
            .map_err(|_| self.error(node.span(), format!("{what} must be a whole number")))
    }

    /// An optional key whose value is one of a few words, read by `parse`; `expected` lists
    /// them for the error.
    fn choice<T>(
        &self,
        map: &MarkedMappingNode,
        key: &str,
        parse: fn(&str) -> Option<T>,
        expected: &str,
    ) -> Result<Option<T>, ScenarioError> {
        let Some(node) = map.get_node(key) else {
            return Ok(None);
        };
        let text = self.scalar(node, &format!("`{key}`"))?.as_str();
        parse(text).map(Some).ok_or_else(|| {
            self.error(
                node.span(),
                format!("`{key}` is `{text}`, expected {expected}"),
            )
        })
    }

    fn bool(&self, node: &Node, what: &str) -> Result<bool, ScenarioError> {
        match self.scalar(node, what)?.as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.error(node.span(), format!("{what} must be true or false"))),
        }
    }

    fn time(&self, node: &Node) -> Result<DateTime<Utc>, ScenarioError> {
        let text = self.scalar(node, "a time")?.as_str();
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                self.error(
                    node.span(),
                    format!("`{text}` is not an RFC 3339 time like 2026-01-01T00:00:00Z"),
                )
            })
    }

    fn string_map(
        &self,
        node: &Node,
        what: &str,
    ) -> Result<BTreeMap<String, String>, ScenarioError> {
        let map = self.mapping(node, what)?;
        map.iter()
            .map(|(key, value)| {
                let value = self.scalar(value, &format!("`{}` in {what}", key.as_str()))?;
                Ok((key.as_str().to_owned(), value.as_str().to_owned()))
            })
            .collect()
    }

    fn string_list(&self, node: &Node, what: &str) -> Result<Vec<String>, ScenarioError> {
        let list = node
            .as_sequence()
            .ok_or_else(|| self.error(node.span(), format!("{what} must be a list")))?;
        list.iter()
            .map(|item| self.scalar(item, what).map(|s| s.as_str().to_owned()))
            .collect()
    }

    fn retry_policy(&self, node: &Node) -> Result<RetryPolicy, ScenarioError> {
        let map = self.mapping(node, "`retry_policy`")?;
        self.only_keys(
            map,
            "`retry_policy`",
            &["retry_after_days", "when_exhausted"],
        )?;
        let mut policy = RetryPolicy::default();
        if let Some(days) = map.get_node("retry_after_days") {
            let list = days.as_sequence().ok_or_else(|| {
                self.error(days.span(), "`retry_after_days` must be a list of days")
            })?;
            policy.retry_after_days = list
                .iter()
                .map(|d| self.number::<i64>(d, "a retry day"))
                .collect::<Result<_, _>>()?;
            if policy.retry_after_days.windows(2).any(|w| w[0] >= w[1])
                || policy.retry_after_days.iter().any(|d| *d <= 0)
            {
                return Err(self.error(
                    days.span(),
                    "`retry_after_days` must be positive and increasing",
                ));
            }
        }
        if let Some(node) = map.get_node("when_exhausted") {
            policy.when_exhausted = match self.scalar(node, "`when_exhausted`")?.as_str() {
                "cancel" => WhenRetriesRunOut::Cancel,
                "unpaid" => WhenRetriesRunOut::MarkUnpaid,
                "past_due" => WhenRetriesRunOut::LeavePastDue,
                "pause" => WhenRetriesRunOut::Pause,
                other => {
                    return Err(self.error(
                        node.span(),
                        format!(
                        "`when_exhausted` is `{other}`, expected cancel, unpaid, past_due or pause"
                    ),
                    ))
                }
            };
        }
        Ok(policy)
    }

    fn price(&self, node: &Node) -> Result<PriceSpec, ScenarioError> {
        let map = self.mapping(node, "a price")?;
        self.only_keys(
            map,
            "a price",
            &[
                "id",
                "amount",
                "currency",
                "interval",
                "lookup_key",
                "features",
            ],
        )?;
        let interval = match map.get_node("interval") {
            None => Interval::Month,
            Some(node) => match self.scalar(node, "`interval`")?.as_str() {
                "month" => Interval::Month,
                "year" => Interval::Year,
                other => {
                    return Err(self.error(
                        node.span(),
                        format!("`interval` is `{other}`, expected month or year"),
                    ))
                }
            },
        };
        Ok(PriceSpec {
            id: self.required_str(map, "id")?.to_owned(),
            amount: self.number(self.required(map, "amount")?, "`amount` (minor units)")?,
            currency: self
                .optional_str(map, "currency")?
                .unwrap_or_else(|| "usd".to_owned()),
            interval,
            lookup_key: self.optional_str(map, "lookup_key")?,
            features: match map.get_node("features") {
                Some(node) => self.string_list(node, "`features`")?,
                None => Vec::new(),
            },
        })
    }

    fn step(&self, node: &Node) -> Result<Step, ScenarioError> {
        let line = node.span().start().map_or(0, |m| m.line());
        let map = self.mapping(node, "a step (`- action: …`)")?;
        let mut entries = map.iter();
        let (Some((key, value)), None) = (entries.next(), entries.next()) else {
            return Err(self.error(
                node.span(),
                "a step must have exactly one action, like `- advance: 1 month`",
            ));
        };
        let action = self.action(key, value)?;
        Ok(Step { line, action })
    }

    fn args<'n>(
        &self,
        value: &'n Node,
        action: &str,
        allowed: &[&str],
    ) -> Result<&'n MarkedMappingNode, ScenarioError> {
        let map = self.mapping(value, &format!("`{action}`"))?;
        self.only_keys(map, &format!("`{action}`"), allowed)?;
        Ok(map)
    }

    fn action(&self, key: &MarkedScalarNode, value: &Node) -> Result<Action, ScenarioError> {
        let name = key.as_str();
        let sub = |allowed: &[&str]| -> Result<(&MarkedMappingNode, String), ScenarioError> {
            let map = self.args(value, name, allowed)?;
            Ok((map, self.required_str(map, "subscription")?.to_owned()))
        };
        Ok(match name {
            "create_customer" => {
                let map = self.args(value, name, &["id", "account", "card", "metadata"])?;
                Action::CreateCustomer {
                    id: self.required_str(map, "id")?.to_owned(),
                    account: self.account(map)?,
                    card: self.optional_str(map, "card")?,
                    metadata: match map.get_node("metadata") {
                        Some(node) => self.string_map(node, "`metadata`")?,
                        None => BTreeMap::new(),
                    },
                }
            }
            "change_card" => {
                let map = self.args(value, name, &["customer", "card"])?;
                Action::ChangeCard {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    card: self.required_str(map, "card")?.to_owned(),
                }
            }
            "subscribe" => {
                let map = self.args(
                    value,
                    name,
                    &["customer", "subscription", "price", "quantity", "trial_days", "payment_behavior", "missing_payment_method"],
                )?;
                Action::Subscribe {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    subscription: self.required_str(map, "subscription")?.to_owned(),
                    price: self.required_str(map, "price")?.to_owned(),
                    quantity: map.get_node("quantity").map(|n| self.number(n, "`quantity`")).transpose()?.unwrap_or(1),
                    trial_days: map.get_node("trial_days").map(|n| self.number(n, "`trial_days`")).transpose()?,
                    payment_behavior: self
                        .choice(map, "payment_behavior", PaymentBehavior::parse, "allow_incomplete, default_incomplete or error_if_incomplete")?
                        .unwrap_or_default(),
                    missing_payment_method: self
                        .choice(map, "missing_payment_method", MissingPaymentMethod::parse, "create_invoice, pause or cancel")?
                        .unwrap_or_default(),
                }
            }
            "confirm" => {
                let (map, subscription) = sub(&["subscription", "card"])?;
                Action::Confirm {
                    subscription,
                    card: self.required_str(map, "card")?.to_owned(),
                }
            }
            "advance" => Action::Advance(self.span_of(value)?),
            "advance_to" => Action::AdvanceTo(self.time(value)?),
            "upgrade" => {
                let (map, subscription) = sub(&["subscription", "price", "proration", "payment_behavior"])?;
                let pending_if_incomplete = self
                    .choice(map, "payment_behavior", |b| match b {
                        "pending_if_incomplete" => Some(true),
                        "allow_incomplete" => Some(false),
                        _ => None,
                    }, "allow_incomplete (the default) or pending_if_incomplete")?
                    .unwrap_or(false);
                Action::Upgrade {
                    subscription,
                    price: self.required_str(map, "price")?.to_owned(),
                    proration: self.optional_str(map, "proration")?.unwrap_or_else(|| "create_prorations".to_owned()),
                    pending_if_incomplete,
                }
            }
            "downgrade" => {
                let (map, subscription) = sub(&["subscription", "price"])?;
                Action::Downgrade {
                    subscription,
                    price: self.required_str(map, "price")?.to_owned(),
                }
            }
            "cancel" => {
                let (map, subscription) = sub(&["subscription", "at_period_end"])?;
                Action::Cancel {
                    subscription,
                    at_period_end: map.get_node("at_period_end").map(|n| self.bool(n, "`at_period_end`")).transpose()?.unwrap_or(false),
                }
            }
            "undo_cancel" => Action::UndoCancel { subscription: sub(&["subscription"])?.1 },
            "release_schedule" => Action::ReleaseSchedule { subscription: sub(&["subscription"])?.1 },
            "delete_customer" => {
                let map = self.args(value, name, &["id"])?;
                Action::DeleteCustomer { id: self.required_str(map, "id")?.to_owned() }
            }
            "cancel_at" => {
                let (map, subscription) = sub(&["subscription", "at"])?;
                Action::CancelAt {
                    subscription,
                    at: self.time(self.required(map, "at")?)?,
                }
            }
            "place_hold" => {
                let map = self.args(value, name, &["customer", "id", "subscription", "reason", "covers_grants"])?;
                let subscription = self.optional_str(map, "subscription")?;
                let covers_grants = match self.optional_str(map, "covers_grants")?.as_deref() {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(self.error(value.span(), format!("`covers_grants` is true or false, not `{other}`")))
                    }
                };
                // As the API refuses it: only a hold on the whole customer reaches its grants.
                if covers_grants && subscription.is_some() {
                    return Err(self.error(value.span(), "`covers_grants` is for a hold on the whole customer: leave out `subscription`"));
                }
                Action::PlaceHold {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    id: self.required_str(map, "id")?.to_owned(),
                    subscription,
                    reason: self.required_str(map, "reason")?.to_owned(),
                    covers_grants,
                }
            }
            "grant" => self.grant(value, name)?,
            "revoke_grant" => {
                let map = self.args(value, name, &["customer", "id"])?;
                Action::RevokeGrant {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    id: self.required_str(map, "id")?.to_owned(),
                }
            }
            "lift_hold" => {
                let map = self.args(value, name, &["customer", "id"])?;
                Action::LiftHold {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    id: self.required_str(map, "id")?.to_owned(),
                }
            }
            "pause" => {
                let (map, subscription) = sub(&["subscription", "behavior"])?;
                Action::Pause {
                    subscription,
                    behavior: self.optional_str(map, "behavior")?.unwrap_or_else(|| "void".to_owned()),
                }
            }
            "resume" => Action::Resume { subscription: sub(&["subscription"])?.1 },
            "complete_3ds" => Action::Complete3ds { subscription: sub(&["subscription"])?.1 },
            "resume_subscription" => Action::ResumeSubscription { subscription: sub(&["subscription"])?.1 },
            "pay_invoice" => Action::PayInvoice { subscription: sub(&["subscription"])?.1 },
            "abandon_3ds" => Action::Abandon3ds { subscription: sub(&["subscription"])?.1 },
            "open_dispute" => {
                let map = self.args(value, name, &["customer"])?;
                Action::OpenDispute { customer: self.required_str(map, "customer")?.to_owned() }
            }
            "close_dispute" => {
                let map = self.args(value, name, &["customer", "outcome"])?;
                Action::CloseDispute {
                    customer: self.required_str(map, "customer")?.to_owned(),
                    outcome: self.required_str(map, "outcome")?.to_owned(),
                }
            }
            "order" => {
                let map = self.args(value, name, &["id", "customer", "amount", "currency", "card"])?;
                Action::Order {
                    id: self.required_str(map, "id")?.to_owned(),
                    customer: self.required_str(map, "customer")?.to_owned(),
                    amount: self.number(self.required(map, "amount")?, "`amount` (minor units)")?,
                    currency: self.optional_str(map, "currency")?.unwrap_or_else(|| "usd".to_owned()),
                    card: self.optional_str(map, "card")?,
                }
            }
            "pay_order" | "complete_order_3ds" | "cancel_order" | "refund_order" => {
                let keys: &[&str] = if name == "pay_order" { &["id", "card"] } else { &["id"] };
                let map = self.args(value, name, keys)?;
                let action = match name {
                    "pay_order" => OrderAction::Pay,
                    "complete_order_3ds" => OrderAction::Complete3ds,
                    "cancel_order" => OrderAction::Cancel,
                    _ => OrderAction::Refund,
                };
                Action::OrderAction {
                    action,
                    id: self.required_str(map, "id")?.to_owned(),
                    card: self.optional_str(map, "card")?,
                }
            }
            "webhooks" => match self.scalar(value, "`webhooks`")?.as_str() {
                "on" => Action::Webhooks { on: true },
                "off" => Action::Webhooks { on: false },
                other => return Err(self.error(value.span(), format!("`webhooks` is `on` or `off`, not `{other}`"))),
            },
            "silently" => {
                let map = self.mapping(value, "`silently` (one Stripe step, like `silently: { cancel: { subscription: sub_1 } }`)")?;
                let mut entries = map.iter();
                let (Some((inner_key, inner_value)), None) = (entries.next(), entries.next()) else {
                    return Err(self.error(value.span(), "`silently` takes exactly one step"));
                };
                let inner = self.action(inner_key, inner_value)?;
                if !inner.happens_at_stripe() {
                    return Err(self.error(inner_key.span(), format!("`{}` does not happen at Stripe, so it cannot happen silently", inner_key.as_str())));
                }
                Action::Silently(Box::new(inner))
            }
            "backfill" => {
                let map = self.args(value, name, &["account"])?;
                Action::Backfill {
                    account: self.account(map)?,
                }
            }
            "reconcile" => {
                let map = self.args(value, name, &["apply", "expect"])?;
                let expect = match map.get_node("expect") {
                    Some(node) => self.string_map(node, "`expect` (object id: drift class)")?,
                    None => BTreeMap::new(),
                };
                if let Some((object, drift)) = expect.iter().find(|(_, d)| subledger_engine::Drift::parse(d).is_none()) {
                    return Err(self.error(
                        map.get_node("expect").map_or(value.span(), Node::span),
                        format!("`{object}: {drift}`: the drift classes are missed_by_subledger, stale_at_subledger, changed_without_event, deleted_at_stripe, unknown_to_stripe and dunning"),
                    ));
                }
                Action::Reconcile {
                    apply: map.get_node("apply").map(|n| self.bool(n, "`apply`")).transpose()?.unwrap_or(false),
                    expect,
                }
            }
            "expect" => Action::Expect(self.expectation(value)?),
            "publish_catalog" => {
                let (catalog, _) = self.catalog(value, "`publish_catalog` (a path to a catalog file)")?;
                Action::PublishCatalog(Box::new(catalog))
            }
            "expect_catalog" => {
                let map = self.args(value, name, &["versions", "in_force"])?;
                let versions = match map.get_node("versions") {
                    None => None,
                    Some(node) => Some(
                        self.scalar(node, "`versions` (a count)")?
                            .as_str()
                            .parse::<usize>()
                            .map_err(|_| self.error(node.span(), "`versions` must be a count"))?,
                    ),
                };
                let in_force = match map.get_node("in_force") {
                    None => None,
                    Some(node) => {
                        let (catalog, text) = self.catalog(node, "`in_force` (a path to a catalog file)")?;
                        Some((catalog.source().to_owned(), subledger_engine::catalogs::content_version(&text)))
                    }
                };
                if versions.is_none() && in_force.is_none() {
                    return Err(self.error(value.span(), "`expect_catalog` needs `versions`, `in_force` or both"));
                }
                Action::ExpectCatalog { versions, in_force }
            }
            other => {
                return Err(self.error(
                    key.span(),
                    format!(
                        "unknown step `{other}` (expected create_customer, change_card, subscribe, advance, advance_to, \
                         upgrade, downgrade, release_schedule, cancel, undo_cancel, pause, resume, complete_3ds, abandon_3ds, \
                         open_dispute, close_dispute, order, pay_order, complete_order_3ds, cancel_at, place_hold, lift_hold, \
                         grant, revoke_grant, cancel_order, refund_order, delete_customer, webhooks, silently, backfill, reconcile, \
                         publish_catalog, expect_catalog or expect)"
                    ),
                ))
            }
        })
    }

    fn span_of(&self, node: &Node) -> Result<ClockStep, ScenarioError> {
        let text = self.scalar(node, "`advance`")?.as_str();
        let bad = || {
            self.error(
                node.span(),
                format!("`{text}` is not a duration like `3 days`, `1 month` or `1 month 2 hours`"),
            )
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        if words.is_empty() || !words.len().is_multiple_of(2) {
            return Err(bad());
        }
        let mut step = ClockStep::default();
        for pair in words.chunks(2) {
            let count: i64 = pair[0].parse().map_err(|_| bad())?;
            if count <= 0 {
                return Err(self.error(
                    node.span(),
                    "a clock only moves forward: the duration must be positive",
                ));
            }
            let add_seconds = |step: &mut ClockStep, per: i64| {
                step.seconds = count
                    .checked_mul(per)
                    .and_then(|s| step.seconds.checked_add(s))
                    .ok_or_else(bad)?;
                Ok::<_, ScenarioError>(())
            };
            let add_months = |step: &mut ClockStep, per: u32| {
                step.months = u32::try_from(count)
                    .ok()
                    .and_then(|c| c.checked_mul(per))
                    .and_then(|m| step.months.checked_add(m))
                    .ok_or_else(bad)?;
                Ok::<_, ScenarioError>(())
            };
            match pair[1].trim_end_matches('s') {
                "second" => add_seconds(&mut step, 1)?,
                "minute" => add_seconds(&mut step, 60)?,
                "hour" => add_seconds(&mut step, 3600)?,
                "day" => add_seconds(&mut step, 86_400)?,
                "week" => add_seconds(&mut step, 7 * 86_400)?,
                "month" => add_months(&mut step, 1)?,
                "year" => add_months(&mut step, 12)?,
                _ => return Err(bad()),
            }
        }
        // A story moves its clock by at most a century per step: every time stays representable.
        const MAX_SECONDS: i64 = 100 * 366 * 86_400;
        if step.seconds > MAX_SECONDS || step.months > 1200 {
            return Err(self.error(
                node.span(),
                "a step may advance the clock by at most 100 years",
            ));
        }
        Ok(step)
    }

    /// `grant: { customer, id, feature, enabled | limit, mode, subscription, starts_at,
    /// expires_at, reason }`.
    fn grant(&self, value: &Node, name: &str) -> Result<Action, ScenarioError> {
        use subledger_domain::grants::{GrantMode, GrantValue};
        let map = self.args(
            value,
            name,
            &[
                "customer",
                "id",
                "feature",
                "enabled",
                "limit",
                "mode",
                "subscription",
                "starts_at",
                "expires_at",
                "reason",
            ],
        )?;
        let enabled = self.optional_str(map, "enabled")?;
        let limit = self.optional_str(map, "limit")?;
        let value_of = match (enabled.as_deref(), limit.as_deref()) {
            (Some("true"), None) => GrantValue::Enabled(true),
            (Some("false"), None) => GrantValue::Enabled(false),
            (None, Some(limit)) => GrantValue::Limit(limit.parse().map_err(|_| {
                self.error(
                    value.span(),
                    format!("`limit` must be a whole number, not `{limit}`"),
                )
            })?),
            _ => {
                return Err(self.error(
                    value.span(),
                    "a grant gives exactly one of `enabled: true|false` and `limit: N`",
                ))
            }
        };
        let mode = match self.optional_str(map, "mode")?.as_deref() {
            None | Some("set") => GrantMode::Set,
            Some("add") => GrantMode::Add,
            Some(other) => {
                return Err(self.error(value.span(), format!("`mode` is set or add, not `{other}`")))
            }
        };
        let time = |key: &str| map.get_node(key).map(|node| self.time(node)).transpose();
        Ok(Action::Grant {
            customer: self.required_str(map, "customer")?.to_owned(),
            id: self.required_str(map, "id")?.to_owned(),
            feature: self.required_str(map, "feature")?.to_owned(),
            value: value_of,
            mode,
            subscription: self.optional_str(map, "subscription")?,
            starts_at: time("starts_at")?,
            expires_at: time("expires_at")?,
            reason: self.required_str(map, "reason")?.to_owned(),
        })
    }

    fn expectation(&self, node: &Node) -> Result<Expectation, ScenarioError> {
        let map = self.args(
            node,
            "expect",
            &[
                "customer",
                "subscriptions",
                "plans",
                "features",
                "dunning",
                "orders",
                "scheduled",
                "user",
                "stripe",
                "invoices",
                "grants",
            ],
        )?;
        let mut expectation = Expectation {
            customer: self.optional_str(map, "customer")?,
            user: self.optional_str(map, "user")?,
            ..Expectation::default()
        };
        if let Some(node) = map.get_node("subscriptions") {
            expectation.subscriptions = self.statuses(node, "`subscriptions`")?;
        }
        if let Some(node) = map.get_node("stripe") {
            expectation.stripe = self.statuses(node, "`stripe`")?;
        }
        if let Some(node) = map.get_node("plans") {
            expectation.plans = Some(self.string_list(node, "`plans`")?);
        }
        if let Some(node) = map.get_node("grants") {
            expectation.grants = Some(self.string_list(node, "`grants`")?);
        }
        if let Some(node) = map.get_node("features") {
            let features = self.mapping(node, "`features`")?;
            for (feature, value) in features.iter() {
                let text = self.scalar(value, "a feature's expected value")?.as_str();
                let expected = match text {
                    "true" => FeatureExpectation::Enabled(true),
                    "false" => FeatureExpectation::Enabled(false),
                    number => FeatureExpectation::Limit(number.parse().map_err(|_| {
                        self.error(
                            value.span(),
                            format!(
                                "feature `{}`: expected true, false or a limit, not `{number}`",
                                feature.as_str()
                            ),
                        )
                    })?),
                };
                expectation
                    .features
                    .insert(feature.as_str().to_owned(), expected);
            }
        }
        if let Some(node) = map.get_node("invoices") {
            let invoices = self.mapping(node, "`invoices`")?;
            for (subscription, list) in invoices.iter() {
                let statuses = self.string_list(list, "invoice statuses")?;
                for status in &statuses {
                    if !matches!(
                        status.as_str(),
                        "draft" | "open" | "paid" | "void" | "uncollectible"
                    ) {
                        return Err(
                            self.error(list.span(), format!("`{status}` is not an invoice status"))
                        );
                    }
                }
                expectation
                    .invoices
                    .insert(subscription.as_str().to_owned(), statuses);
            }
        }
        if let Some(node) = map.get_node("dunning") {
            expectation.dunning = Some(self.dunning(node)?);
        }
        if let Some(node) = map.get_node("scheduled") {
            let scheduled = self.mapping(node, "`scheduled`")?;
            for (subscription, value) in scheduled.iter() {
                let change = self.scalar(value, "a scheduled change")?.as_str();
                if !matches!(change, "cancel" | "plan_change" | "none") {
                    return Err(self.error(
                        value.span(),
                        format!("`{change}` is not cancel, plan_change or none"),
                    ));
                }
                expectation
                    .scheduled
                    .insert(subscription.as_str().to_owned(), change.to_owned());
            }
        }
        if let Some(node) = map.get_node("orders") {
            let orders = self.mapping(node, "`orders`")?;
            for (order, value) in orders.iter() {
                expectation
                    .orders
                    .insert(order.as_str().to_owned(), self.order_expectation(value)?);
            }
        }
        let about_engine = !expectation.subscriptions.is_empty()
            || expectation.plans.is_some()
            || expectation.grants.is_some()
            || !expectation.features.is_empty()
            || expectation.dunning.is_some()
            || !expectation.scheduled.is_empty()
            || expectation.user.is_some();
        if about_engine && expectation.customer.is_none() {
            return Err(self.error(
                node.span(),
                "`expect` needs `customer` to check subscriptions, plans, features or dunning",
            ));
        }
        Ok(expectation)
    }

    /// `order_1: paid`, or `order_1: { state: failed, decline_code: insufficient_funds }`, or
    /// `order_1: { state: failed, message: "…" }` for a decline that has only an error code.
    fn order_expectation(&self, node: &Node) -> Result<OrderExpectation, ScenarioError> {
        let check_state = |value: &Node| -> Result<String, ScenarioError> {
            let state = self.scalar(value, "an order state")?.as_str();
            if !matches!(
                state,
                "pending" | "requires_action" | "paid" | "failed" | "canceled" | "refunded"
            ) {
                return Err(self.error(
                    value.span(),
                    format!("`{state}` is not an order state (pending, requires_action, paid, failed, canceled or refunded)"),
                ));
            }
            Ok(state.to_owned())
        };
        if node.as_scalar().is_some() {
            return Ok(OrderExpectation {
                state: check_state(node)?,
                decline_code: None,
                message: None,
            });
        }
        let map = self.args(node, "an order", &["state", "decline_code", "message"])?;
        Ok(OrderExpectation {
            state: check_state(self.required(map, "state")?)?,
            decline_code: self.optional_str(map, "decline_code")?,
            message: self.optional_str(map, "message")?,
        })
    }

    /// `dunning: past_due`, or `dunning: { state: past_due, attempt: 2 }`.
    fn dunning(&self, node: &Node) -> Result<DunningExpectation, ScenarioError> {
        let check_state = |value: &Node| -> Result<String, ScenarioError> {
            let state = self.scalar(value, "the dunning state")?.as_str();
            if !matches!(state, "ok" | "past_due" | "suspended" | "ended") {
                return Err(self.error(
                    value.span(),
                    format!("`{state}` is not a dunning state (ok, past_due, suspended or ended)"),
                ));
            }
            Ok(state.to_owned())
        };
        if node.as_scalar().is_some() {
            return Ok(DunningExpectation {
                state: check_state(node)?,
                attempt: None,
            });
        }
        let map = self.args(node, "dunning", &["state", "attempt"])?;
        Ok(DunningExpectation {
            state: check_state(self.required(map, "state")?)?,
            attempt: map
                .get_node("attempt")
                .map(|n| self.number(n, "`attempt`"))
                .transpose()?,
        })
    }

    fn statuses(&self, node: &Node, what: &str) -> Result<BTreeMap<String, String>, ScenarioError> {
        let statuses = self.string_map(node, what)?;
        let map = self.mapping(node, what)?;
        for (key, value) in map.iter() {
            let status = value.as_scalar().map(|s| s.as_str()).unwrap_or_default();
            if subledger_domain::billing::SubscriptionStatus::parse(status).is_none() {
                return Err(self.error(
                    value.span(),
                    format!(
                        "`{status}` is not a subscription status (of `{}`)",
                        key.as_str()
                    ),
                ));
            }
        }
        Ok(statuses)
    }
}
