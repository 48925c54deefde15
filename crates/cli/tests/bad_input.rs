//! Bad input to `subledger serve`, as an operator would give it: each flag, variable and file
//! that is wrong gets a non-zero exit and a message naming the problem (never a secret), and
//! nothing is stored (the database file is never created).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{example_catalog, SERVE_VARIABLES};

mod common;

const SECRET: &str = "whsec_bad_input_test_secret";

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("subledger-bad-input-{}-{name}", std::process::id()))
}

/// Runs `serve` with `args` and `env`; it must exit (within 60 s) with a failure whose
/// stderr contains `expected`, without printing the secret or creating `database`.
fn refused(case: &str, args: &[&str], env: &[(&str, &str)], expected: &str, database: &Path) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_subledger"));
    command.arg("serve").args(args);
    for name in SERVE_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{case}: serve started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{case}: exit status {status}");
    assert!(
        stderr.contains(expected),
        "{case}: expected {expected:?} in: {stderr}"
    );
    assert!(
        !stderr.contains(SECRET),
        "{case}: the secret was printed: {stderr}"
    );
    assert!(!database.exists(), "{case}: a database was created");
}

/// A case's name, arguments, environment and what its message must contain.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn every_bad_flag_variable_and_file_is_refused_with_its_name_and_nothing_stored() {
    let database = scratch("never.db");
    let url = format!("sqlite://{}", database.display());
    let catalog = example_catalog();
    let catalog = catalog.to_str().unwrap();
    let bad_yaml = scratch("bad.yaml");
    std::fs::write(&bad_yaml, "plans:\n  pro:\n    features: { seats: lots }\n").unwrap();
    let empty_file = scratch("empty");
    std::fs::write(&empty_file, "\n").unwrap();
    let secret_file = scratch("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let base = [
        ("SUBLEDGER_WEBHOOK_SECRETS", SECRET),
        ("SUBLEDGER_DATABASE_URL", url.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env: Vec<(&str, &str)> = base.to_vec();
        env.extend_from_slice(extra);
        env
    };
    let bad_yaml = bad_yaml.to_str().unwrap().to_owned();
    let empty_file = empty_file.to_str().unwrap().to_owned();
    let secret_file = secret_file.to_str().unwrap().to_owned();
    let cases: Vec<Case> = vec![
        ("no catalog", vec![], with(&[]), "no plan catalog"),
        (
            "a catalog that does not exist",
            vec!["--catalog", "/nonexistent/catalog.yaml"],
            with(&[]),
            "reading the catalog",
        ),
        (
            "a catalog that does not parse",
            vec!["--catalog", &bad_yaml],
            with(&[]),
            "seats",
        ),
        (
            "a webhook secret without whsec_",
            vec!["--catalog", catalog],
            vec![
                ("SUBLEDGER_WEBHOOK_SECRETS", "sk_live_oops"),
                ("SUBLEDGER_DATABASE_URL", &url),
            ],
            "entry 1 does not start with whsec_",
        ),
        (
            "a webhook secret file that is empty",
            vec!["--catalog", catalog],
            vec![
                ("SUBLEDGER_WEBHOOK_SECRETS_FILE", &empty_file),
                ("SUBLEDGER_DATABASE_URL", &url),
            ],
            "is empty",
        ),
        (
            "a secret both directly and from a file",
            vec!["--catalog", catalog],
            with(&[])
                .into_iter()
                .chain([("SUBLEDGER_WEBHOOK_SECRETS_FILE", secret_file.as_str())])
                .collect(),
            "both set",
        ),
        (
            "tokens that are only commas",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_API_TOKENS", ",,,")]),
            "SUBLEDGER_API_TOKENS is set but holds no token",
        ),
        (
            "a read key that is not a Stripe key",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_STRIPE_READ_KEY", "pk_test_publishable")]),
            "does not start with rk_ or sk_",
        ),
        (
            "a database URL of another kind",
            vec![
                "--catalog",
                catalog,
                "--database-url",
                "mysql://root@localhost/db",
            ],
            vec![("SUBLEDGER_WEBHOOK_SECRETS", SECRET)],
            "expected a URL starting with sqlite: or postgres://",
        ),
        (
            "an address that is not one",
            vec!["--catalog", catalog, "--addr", "localhost:http"],
            with(&[]),
            "--addr",
        ),
        (
            "a store timeout below its range",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_STORE_TIMEOUT_MS", "5")]),
            "--store-timeout-ms",
        ),
        (
            "a header timeout that is not a number",
            vec!["--catalog", catalog, "--http-header-timeout-ms", "soon"],
            with(&[]),
            "--http-header-timeout-ms",
        ),
        (
            "no connections allowed",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_HTTP_MAX_CONNECTIONS", "0")]),
            "--http-max-connections",
        ),
        (
            "a row timeout of zero",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_WORKER_ROW_TIMEOUT_SECS", "0")]),
            "--worker-row-timeout-secs",
        ),
        (
            "a Stripe timeout above its range",
            vec!["--catalog", catalog, "--stripe-timeout-ms", "999999999"],
            with(&[]),
            "--stripe-timeout-ms",
        ),
        (
            "a notification endpoint over plain HTTP to another host",
            vec!["--catalog", catalog],
            with(&[
                ("SUBLEDGER_NOTIFY_URLS", "http://hooks.example.com/subledger"),
                ("SUBLEDGER_NOTIFY_SECRET", "0123456789abcdef0123456789abcdef"),
            ]),
            "SUBLEDGER_NOTIFY_URLS: entry 1 (http://hooks.example.com/subledger) must be an https:// URL",
        ),
        (
            "a notification endpoint without a secret",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_NOTIFY_URLS", "https://hooks.example.com/subledger")]),
            "SUBLEDGER_NOTIFY_SECRET is not",
        ),
        (
            "a short notification secret",
            vec!["--catalog", catalog],
            with(&[
                ("SUBLEDGER_NOTIFY_URLS", "https://user:pw@hooks.example.com/x"),
                ("SUBLEDGER_NOTIFY_SECRET", "short"),
            ]),
            "SUBLEDGER_NOTIFY_SECRET: entry 1 is shorter than 32 characters",
        ),
        (
            "a notification retry window of zero",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_NOTIFY_RETRY_FOR_SECS", "0")]),
            "--notify-retry-for-secs",
        ),
        (
            "an unknown log format",
            vec!["--catalog", catalog],
            with(&[("SUBLEDGER_LOG_FORMAT", "xml")]),
            "xml",
        ),
        (
            "the development secret on a public address",
            vec!["--catalog", catalog, "--addr", "0.0.0.0:0"],
            vec![
                (
                    "SUBLEDGER_WEBHOOK_SECRETS",
                    "whsec_subledger_local_development",
                ),
                ("SUBLEDGER_API_TOKENS", "tok"),
                ("SUBLEDGER_DATABASE_URL", &url),
            ],
            "development webhook secret",
        ),
        (
            "no token on a public address",
            vec!["--catalog", catalog, "--addr", "0.0.0.0:0"],
            with(&[]),
            "--allow-unauthenticated",
        ),
    ];
    let tried = cases.len();
    for (case, args, env, expected) in cases {
        refused(case, &args, &env, expected, &database);
    }
    eprintln!("{tried} bad inputs to serve refused, nothing stored");
    for file in [bad_yaml, empty_file, secret_file] {
        let _ = std::fs::remove_file(file);
    }
}
