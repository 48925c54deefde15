//! The plan catalog: which Stripe prices belong to which plan, and what each plan grants.
//!
//! ```yaml
//! default_plan: free
//! plans:
//!   free:
//!     features: { api_calls: 1000 }
//!   pro:
//!     prices: [price_1ProMonthly, pro_monthly]   # price ids or lookup keys
//!     features: { sso: true, seats: 10, api_calls: 100000 }
//! ```
//!
//! `true` is a boolean feature, a non-negative integer a limit, `false` an explicit "not granted".
//!
//! An optional `policy` says how billing trouble limits access:
//!
//! ```yaml
//! policy:
//!   grace_period_days: 7   # access kept this long after the first failed renewal payment
//!   unpaid: none           # what an `unpaid` subscription grants: none | plan
//!   paused: none           # what a `paused` subscription grants: none | plan
//! ```
//!
//! A plan's `changes_apply_to` says whom a change of its features reaches when a new catalog
//! version is published: `everyone` (the default) or `new_subscriptions`, in which case a
//! subscription keeps the plan's features of the version in force when it started (Stripe's
//! `start_date`). Versions are followed in order: a version that marks the plan `everyone`
//! moves every subscription to its features, one that marks it `new_subscriptions` leaves
//! them where they were; a subscription whose plan did not exist yet takes the first version
//! that has it.
//!
//! ```yaml
//!   pro:
//!     prices: [pro_monthly]
//!     features: { seats: 20 }
//!     changes_apply_to: new_subscriptions   # grandfathered: existing ones keep their seats
//! ```
//!
//! `sum_limits: [seats]` makes those limits add up across subscriptions (each item's limit
//! times its quantity) instead of the largest one winning.
//!
//! Every error names the source, the line and the problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::billing::SubscriptionItem;
use crate::ids::CustomerId;
use marked_yaml::{LoadError, Node, Span};

/// What one plan grants for one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureGrant {
    Enabled,
    Disabled,
    Limit(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub prices: Vec<String>,
    pub features: BTreeMap<String, FeatureGrant>,
    pub changes_apply_to: ChangesApplyTo,
}

/// Whom a new catalog version's change of a plan reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangesApplyTo {
    /// Every subscription on the plan.
    #[default]
    Everyone,
    /// Subscriptions that start from then on; existing ones keep what they had.
    NewSubscriptions,
}

/// What a subscription in a troubled status still grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Nothing: the customer falls back to the default plan.
    None,
    /// The subscription's plan, as if it were active.
    Plan,
}

/// How billing trouble limits access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    /// How long access is kept after the first failed renewal payment.
    pub grace_period: chrono::Duration,
    pub unpaid: Grant,
    pub paused: Grant,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            grace_period: chrono::Duration::days(7),
            unpaid: Grant::None,
            paused: Grant::None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    default_plan: String,
    policy: AccessPolicy,
    plans: BTreeMap<String, Plan>,
    /// Price id or lookup key -> plan name.
    plan_by_price: HashMap<String, String>,
    /// Every feature any plan names, so answers list features a customer lacks too.
    features: BTreeSet<String>,
    /// Limits added up across subscriptions (and item quantities) instead of the largest.
    summed: BTreeSet<String>,
    /// Where the catalog was read from, and its text: a version is recorded as written.
    source: String,
    text: String,
    /// When this catalog was published as a version, and the versions published before it
    /// (oldest first), for plans whose changes apply to new subscriptions only. Empty for a
    /// catalog read from a file and not yet part of a history.
    published_at: Option<DateTime<Utc>>,
    earlier: Vec<(DateTime<Utc>, Arc<Catalog>)>,
}

/// A catalog that could not be loaded: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogError {
    pub source: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.source, line, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for CatalogError {}

impl Catalog {
    /// Parses a catalog. `source` names where the text came from (a file path) for errors.
    pub fn from_yaml(source: &str, text: &str) -> Result<Self, CatalogError> {
        Self::check(source, text).map_err(|mut problems| problems.swap_remove(0))
    }

    /// Parses a catalog, finding every problem rather than stopping at the first (in the
    /// order they were found: unknown keys first, then plans, then the rest); never an empty
    /// list. Only a problem that leaves nothing to read on (broken YAML, no `plans`) ends it.
    pub fn check(source: &str, text: &str) -> Result<Self, Vec<CatalogError>> {
        let parser = Parser {
            source,
            problems: std::cell::RefCell::default(),
        };
        let read = parser.catalog(text);
        let mut problems = parser.problems.into_inner();
        match read {
            Ok(catalog) if problems.is_empty() => Ok(catalog),
            Ok(_) => Err(problems),
            Err(fatal) => {
                problems.push(fatal);
                Err(problems)
            }
        }
    }

    pub fn default_plan(&self) -> &Plan {
        // The parser guarantees the default plan exists; fall back to an empty plan rather
        // than panic if that ever stops being true.
        self.plans.get(&self.default_plan).unwrap_or(&EMPTY_PLAN)
    }

    pub fn policy(&self) -> &AccessPolicy {
        &self.policy
    }

    /// Every plan, by name.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values()
    }

    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// This catalog as the version published at `published_at`, after `earlier` (oldest
    /// first, each with its publishing time).
    pub fn in_history(
        mut self,
        published_at: DateTime<Utc>,
        earlier: Vec<(DateTime<Utc>, Arc<Catalog>)>,
    ) -> Self {
        self.published_at = Some(published_at);
        self.earlier = earlier;
        self
    }

    /// What `plan` (one of this catalog's) grants a subscription that started at
    /// `started_at`: its features in this version unless the plan's changes apply to new
    /// subscriptions only and the subscription started under an earlier version (the rule in
    /// the module's docs). An unknown start follows every change.
    pub fn as_started<'a>(&'a self, plan: &'a Plan, started_at: Option<DateTime<Utc>>) -> &'a Plan {
        let (Some(started_at), Some(published_at)) = (started_at, self.published_at) else {
            return plan;
        };
        if plan.changes_apply_to == ChangesApplyTo::Everyone || started_at >= published_at {
            return plan;
        }
        // The version in force when the subscription started (the first if it started
        // before any), then every later one before this.
        let first = self
            .earlier
            .iter()
            .rposition(|(at, _)| *at <= started_at)
            .unwrap_or(0);
        let mut held: Option<&Plan> = None;
        for (_, version) in self.earlier.iter().skip(first) {
            held = match version.plan(&plan.name) {
                Some(found)
                    if found.changes_apply_to == ChangesApplyTo::NewSubscriptions
                        && held.is_some() =>
                {
                    held
                }
                found => found,
            };
        }
        held.unwrap_or(plan)
    }

    /// When this catalog was published as a version, if it is one.
    pub fn published_at(&self) -> Option<DateTime<Utc>> {
        self.published_at
    }

    /// The plan a subscription item belongs to, by price id first, then by lookup key.
    pub fn plan_for_price(&self, price_id: &str, lookup_key: Option<&str>) -> Option<&Plan> {
        let name = self
            .plan_by_price
            .get(price_id)
            .or_else(|| lookup_key.and_then(|key| self.plan_by_price.get(key)))?;
        self.plans.get(name)
    }

    /// The plan of `customer`'s subscription item. A lookup key is a name the account that
    /// owns the price chose, so it only counts for the platform's own customers: a connected
    /// account could otherwise name its price `pro_monthly` and be granted the platform's plan.
    /// A connected account's items match by price id alone.
    pub fn plan_of_item(&self, customer: &CustomerId, item: &SubscriptionItem) -> Option<&Plan> {
        let lookup_key = item
            .lookup_key
            .as_deref()
            .filter(|_| customer.account().is_none());
        self.plan_for_price(item.price_id.as_str(), lookup_key)
    }

    pub fn features(&self) -> &BTreeSet<String> {
        &self.features
    }

    /// Where it was read from (a file's path).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text it was read from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether `feature` is metered: some plan gives it a limit (else it is on or off).
    pub fn is_metered(&self, feature: &str) -> bool {
        self.plans
            .values()
            .any(|plan| matches!(plan.features.get(feature), Some(FeatureGrant::Limit(_))))
    }

    /// Whether `feature`'s limits add up across subscriptions rather than the largest winning.
    pub fn sums(&self, feature: &str) -> bool {
        self.summed.contains(feature)
    }
}

/// The line and a plain description of a YAML file that does not parse, for this crate's
/// and other YAML readers' error messages.
pub fn describe_load_error(error: &LoadError) -> (Option<usize>, String) {
    #[allow(deprecated)]
    let (marker, message) = match error {
        LoadError::TopLevelMustBeMapping(m) => {
            (Some(*m), "the top level must be a mapping".to_owned())
        }
        LoadError::TopLevelMustBeSequence(m) => (Some(*m), "unexpected sequence".to_owned()),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "anchors are not supported".to_owned()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "keys must be plain names".to_owned()),
        LoadError::UnexpectedTag(m) => (Some(*m), "tags are not supported".to_owned()),
        LoadError::ScanError(m, e) => (Some(*m), format!("invalid YAML: {}", e.info())),
        LoadError::DuplicateKey(inner) => (
            inner.key.span().start().copied(),
            format!("duplicate key `{}`", inner.key.as_str()),
        ),
    };
    (marker.map(|m| m.line()), message)
}

static EMPTY_PLAN: Plan = Plan {
    name: String::new(),
    prices: Vec::new(),
    features: BTreeMap::new(),
    changes_apply_to: ChangesApplyTo::Everyone,
};

struct Parser<'a> {
    source: &'a str,
    /// Problems found so far that did not stop the reading: a check lists them all.
    problems: std::cell::RefCell<Vec<CatalogError>>,
}

impl Parser<'_> {
    /// Records a problem and reads on.
    fn note(&self, problem: CatalogError) {
        self.problems.borrow_mut().push(problem);
    }

    fn error(&self, span: &Span, message: impl Into<String>) -> CatalogError {
        CatalogError {
            source: self.source.to_owned(),
            line: span.start().map(|marker| marker.line()),
            message: message.into(),
        }
    }

    fn load_error(&self, error: &LoadError) -> CatalogError {
        let (line, message) = describe_load_error(error);
        CatalogError {
            source: self.source.to_owned(),
            line,
            message,
        }
    }

    fn catalog(&self, text: &str) -> Result<Catalog, CatalogError> {
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        let root = marked_yaml::parse_yaml_with_options(0, text, options)
            .map_err(|e| self.load_error(&e))?;
        let root = root
            .as_mapping()
            .ok_or_else(|| self.error(root.span(), "the catalog must be a mapping"))?;
        for key in root.keys() {
            if !matches!(
                key.as_str(),
                "default_plan" | "plans" | "policy" | "sum_limits"
            ) {
                self.note(self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` (expected `default_plan`, `plans`, `policy` or `sum_limits`)",
                        key.as_str()
                    ),
                ));
            }
        }
        let plans_node = root.get_node("plans").ok_or_else(|| {
            self.error(
                root.span(),
                "missing `plans`: a mapping of plan names to plans",
            )
        })?;
        let plans_map = plans_node.as_mapping().ok_or_else(|| {
            self.error(
                plans_node.span(),
                "`plans` must be a mapping of plan names to plans",
            )
        })?;
        if plans_map.is_empty() {
            return Err(self.error(plans_node.span(), "`plans` is empty"));
        }

        let mut plans = BTreeMap::new();
        let mut plan_by_price: HashMap<String, String> = HashMap::new();
        let mut features = BTreeSet::new();
        for (name, node) in plans_map.iter() {
            let plan = match self.plan(name.as_str(), node) {
                Ok(plan) => plan,
                Err(problem) => {
                    self.note(problem);
                    continue;
                }
            };
            if let Some(prices) = node.as_mapping().and_then(|m| m.get_sequence("prices")) {
                for (price, price_node) in plan.prices.iter().zip(prices.iter()) {
                    if let Some(other) = plan_by_price.insert(price.clone(), plan.name.clone()) {
                        self.note(self.error(
                            price_node.span(),
                            format!(
                                "price `{price}` is listed by both plan `{other}` and plan `{}`",
                                plan.name
                            ),
                        ));
                    }
                }
            }
            features.extend(plan.features.keys().cloned());
            plans.insert(plan.name.clone(), plan);
        }

        let default = root.get_node("default_plan").ok_or_else(|| {
            self.error(
                root.span(),
                "missing `default_plan`: the plan of customers without an active subscription",
            )
        })?;
        let default_plan = default
            .as_scalar()
            .map(|s| s.as_str().to_owned())
            .ok_or_else(|| self.error(default.span(), "`default_plan` must be a plan name"))?;
        // A plan that could not be read is reported already.
        let unreadable_plan = plans_map
            .keys()
            .any(|name| name.as_str() == default_plan && !plans.contains_key(&default_plan));
        if !plans.contains_key(&default_plan) && !unreadable_plan {
            self.note(self.error(
                default.span(),
                format!("default_plan `{default_plan}` is not one of the plans"),
            ));
        }
        let policy = match root.get_node("policy") {
            Some(node) => self.policy(node).unwrap_or_else(|problem| {
                self.note(problem);
                AccessPolicy::default()
            }),
            None => AccessPolicy::default(),
        };
        let mut summed = BTreeSet::new();
        if let Some(node) = root.get_node("sum_limits") {
            let list = node.as_sequence().ok_or_else(|| {
                self.error(node.span(), "`sum_limits` must be a list of limit features")
            })?;
            for item in list.iter() {
                let name = item.as_scalar().map(|s| s.as_str()).unwrap_or_default();
                if !features.contains(name) {
                    self.note(self.error(
                        item.span(),
                        format!("`sum_limits` names `{name}`, which no plan grants"),
                    ));
                }
                summed.insert(name.to_owned());
            }
        }
        Ok(Catalog {
            default_plan,
            policy,
            plans,
            plan_by_price,
            features,
            summed,
            source: self.source.to_owned(),
            text: text.to_owned(),
            published_at: None,
            earlier: Vec::new(),
        })
    }

    fn policy(&self, node: &Node) -> Result<AccessPolicy, CatalogError> {
        let map = node
            .as_mapping()
            .ok_or_else(|| self.error(node.span(), "`policy` must be a mapping"))?;
        let mut policy = AccessPolicy::default();
        for (key, value) in map.iter() {
            let text = value.as_scalar().map(|s| s.as_str()).unwrap_or_default();
            match key.as_str() {
                "grace_period_days" => {
                    match text.parse().ok().filter(|d| (0..=365).contains(d)) {
                        Some(days) => policy.grace_period = chrono::Duration::days(days),
                        None => self.note(self.error(
                            value.span(),
                            "`grace_period_days` must be a whole number of days from 0 to 365",
                        )),
                    }
                }
                "unpaid" | "paused" => {
                    let grant = match text {
                        "none" => Grant::None,
                        "plan" => Grant::Plan,
                        _ => {
                            self.note(self.error(
                                value.span(),
                                format!("`{}` must be `none` or `plan`", key.as_str()),
                            ));
                            continue;
                        }
                    };
                    if key.as_str() == "unpaid" {
                        policy.unpaid = grant;
                    } else {
                        policy.paused = grant;
                    }
                }
                other => self.note(self.error(
                    key.span(),
                    format!("unknown key `{other}` in `policy` (expected grace_period_days, unpaid or paused)"),
                )),
            }
        }
        Ok(policy)
    }

    fn plan(&self, name: &str, node: &Node) -> Result<Plan, CatalogError> {
        let map = node
            .as_mapping()
            .ok_or_else(|| self.error(node.span(), format!("plan `{name}` must be a mapping")))?;
        for key in map.keys() {
            if !matches!(key.as_str(), "prices" | "features" | "changes_apply_to") {
                self.note(self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in plan `{name}` (expected `prices`, `features` or `changes_apply_to`)",
                        key.as_str()
                    ),
                ));
            }
        }
        let changes_apply_to = match map.get_node("changes_apply_to") {
            None => ChangesApplyTo::Everyone,
            Some(node) => match node.as_scalar().map(|s| s.as_str()) {
                Some("everyone") => ChangesApplyTo::Everyone,
                Some("new_subscriptions") => ChangesApplyTo::NewSubscriptions,
                _ => {
                    self.note(self.error(
                        node.span(),
                        format!("`changes_apply_to` of plan `{name}` must be `everyone` or `new_subscriptions`"),
                    ));
                    ChangesApplyTo::Everyone
                }
            },
        };
        let mut prices = Vec::new();
        if let Some(prices_node) = map.get_node("prices") {
            let list = prices_node.as_sequence().ok_or_else(|| {
                self.error(
                    prices_node.span(),
                    format!("`prices` of plan `{name}` must be a list of price ids or lookup keys"),
                )
            })?;
            for price in list.iter() {
                match price.as_scalar().filter(|s| !s.as_str().is_empty()) {
                    Some(id) => prices.push(id.as_str().to_owned()),
                    None => self.note(self.error(
                        price.span(),
                        format!("a price of plan `{name}` must be a price id or lookup key"),
                    )),
                }
            }
        }
        let mut features = BTreeMap::new();
        if let Some(features_node) = map.get_node("features") {
            let feature_map = features_node.as_mapping().ok_or_else(|| {
                self.error(
                    features_node.span(),
                    format!("`features` of plan `{name}` must be a mapping"),
                )
            })?;
            for (feature, value) in feature_map.iter() {
                match value.as_scalar().and_then(|s| parse_grant(s.as_str())) {
                    Some(grant) => {
                        features.insert(feature.as_str().to_owned(), grant);
                    }
                    None => self.note(self.error(
                        value.span(),
                        format!(
                            "feature `{}` of plan `{name}` must be true, false or a non-negative integer limit",
                            feature.as_str()
                        ),
                    )),
                }
            }
        }
        Ok(Plan {
            name: name.to_owned(),
            prices,
            features,
            changes_apply_to,
        })
    }
}

fn parse_grant(value: &str) -> Option<FeatureGrant> {
    match value {
        "true" => Some(FeatureGrant::Enabled),
        "false" => Some(FeatureGrant::Disabled),
        number => number.parse::<u64>().ok().map(FeatureGrant::Limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "\
default_plan: free
plans:
  free:
    features: { api_calls: 1000 }
  pro:
    prices: [price_1ProMonthly, pro_monthly]
    features: { sso: true, seats: 10, api_calls: 100000 }
";

    #[test]
    fn it_maps_prices_and_lookup_keys_to_plans() {
        let catalog = Catalog::from_yaml("catalog.yaml", EXAMPLE).unwrap();
        assert_eq!(catalog.default_plan().name, "free");
        assert_eq!(
            catalog
                .plan_for_price("price_1ProMonthly", None)
                .unwrap()
                .name,
            "pro"
        );
        assert_eq!(
            catalog
                .plan_for_price("price_other", Some("pro_monthly"))
                .unwrap()
                .name,
            "pro"
        );
        assert!(catalog.plan_for_price("price_other", None).is_none());
        let pro = catalog.plan("pro").unwrap();
        assert_eq!(pro.features["sso"], FeatureGrant::Enabled);
        assert_eq!(pro.features["seats"], FeatureGrant::Limit(10));
        assert_eq!(
            catalog
                .features()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["api_calls", "seats", "sso"]
        );
    }

    fn error_of(text: &str) -> CatalogError {
        Catalog::from_yaml("plans.yaml", text).unwrap_err()
    }

    #[test]
    fn it_names_file_and_line_of_a_bad_feature_value() {
        let error =
            error_of("default_plan: free\nplans:\n  free:\n    features:\n      seats: lots\n");
        assert_eq!(error.line, Some(5));
        assert!(
            error
                .to_string()
                .starts_with("plans.yaml:5: feature `seats` of plan `free`"),
            "{error}"
        );
    }

    #[test]
    fn it_rejects_a_default_plan_that_does_not_exist() {
        let error = error_of("default_plan: gratis\nplans:\n  free: {}\n");
        assert_eq!(error.line, Some(1));
        assert!(
            error.message.contains("`gratis` is not one of the plans"),
            "{error}"
        );
    }

    #[test]
    fn it_rejects_a_price_listed_by_two_plans() {
        let error = error_of(
            "default_plan: a\nplans:\n  a:\n    prices: [p1]\n  b:\n    prices: [p2, p1]\n",
        );
        assert_eq!(error.line, Some(6));
        assert!(
            error
                .message
                .contains("price `p1` is listed by both plan `a` and plan `b`"),
            "{error}"
        );
    }

    #[test]
    fn it_reads_the_access_policy_with_defaults() {
        let catalog = Catalog::from_yaml("c", EXAMPLE).unwrap();
        assert_eq!(*catalog.policy(), AccessPolicy::default());
        assert_eq!(catalog.policy().grace_period, chrono::Duration::days(7));
        let text = format!("{EXAMPLE}policy:\n  grace_period_days: 3\n  unpaid: plan\n");
        let catalog = Catalog::from_yaml("c", &text).unwrap();
        assert_eq!(catalog.policy().grace_period, chrono::Duration::days(3));
        assert_eq!(catalog.policy().unpaid, Grant::Plan);
        assert_eq!(catalog.policy().paused, Grant::None);
        let error = error_of(&format!("{EXAMPLE}policy:\n  paused: sometimes\n"));
        assert_eq!(error.line, Some(9));
        assert!(
            error.message.contains("`paused` must be `none` or `plan`"),
            "{error}"
        );
    }

    #[test]
    fn it_reads_whom_a_plan_change_reaches() {
        let text = EXAMPLE.replace(
            "    features: { sso: true, seats: 10, api_calls: 100000 }\n",
            "    features: { sso: true, seats: 10, api_calls: 100000 }\n    changes_apply_to: new_subscriptions\n",
        );
        let catalog = Catalog::from_yaml("catalog.yaml", &text).unwrap();
        let plan = |name: &str| catalog.plan(name).unwrap().changes_apply_to;
        assert_eq!(plan("pro"), ChangesApplyTo::NewSubscriptions);
        assert_eq!(plan("free"), ChangesApplyTo::Everyone);
        let wrong = text.replace("new_subscriptions", "existing");
        let error = Catalog::from_yaml("catalog.yaml", &wrong).unwrap_err();
        assert_eq!(error.line, Some(8), "{error}");
        assert!(
            error.message.contains("`everyone` or `new_subscriptions`"),
            "{error}"
        );
    }

    #[test]
    fn a_check_finds_every_problem_with_its_line() {
        let text = "\
default_plan: free
plans:
  free:
    features: { seats: -1, sso: maybe }
  pro:
    prices: [pro_monthly, \"\"]
    features: { seats: 10 }
    changes_apply_to: sometimes
    colour: blue
  team:
    prices: [pro_monthly]
policy:
  grace_period_days: 900
  unpaid: plan
  paused: never
sum_limits: [seats, storage]
extra: 1
";
        let problems = Catalog::check("catalog.yaml", text).unwrap_err();
        let mut lines: Vec<usize> = problems.iter().filter_map(|p| p.line).collect();
        lines.sort_unstable();
        assert_eq!(lines, [4, 4, 6, 8, 9, 11, 13, 15, 16, 17], "{problems:#?}");
        assert_eq!(
            Catalog::from_yaml("catalog.yaml", text).unwrap_err(),
            problems[0],
            "a start reports the first"
        );
        assert!(Catalog::check("catalog.yaml", EXAMPLE).is_ok());
    }

    #[test]
    fn it_rejects_unknown_keys_and_broken_yaml() {
        let error = error_of("default_plan: a\nplanz: {}\n");
        assert_eq!(error.line, Some(2));
        let error = error_of("default_plan: a\nplans:\n  a: {features: [\n");
        assert!(error.line.is_some());
        assert!(error.message.starts_with("invalid YAML"), "{error}");
        let error = error_of("default_plan: a\nplans:\n  a: {}\n  a: {}\n");
        assert_eq!(error.line, Some(4));
        let error = error_of("default_plan: a\nplans:\n  a:\n    features: { seats: -3 }\n");
        assert_eq!(error.line, Some(4));
    }
}
