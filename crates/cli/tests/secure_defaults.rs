//! `subledger serve` as an operator starts it: what it refuses to expose beyond loopback, the
//! two token scopes, and secrets read from `*_FILE` paths. The real binary, a real socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{example_catalog, SERVE_VARIABLES};

mod common;

const SECRET: &str = "whsec_secure_defaults_test";
const DEVELOPMENT_SECRET: &str = "whsec_subledger_local_development";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scratch_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "subledger-secure-{}-{name}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

/// `subledger serve` on `addr` with `env` (and nothing else of the test's secrets).
fn serve(addr: &str, args: &[&str], env: &[(&str, String)]) -> Child {
    let database = scratch_file("db", "");
    std::fs::remove_file(&database).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_subledger"));
    command
        .args(["serve", "--addr", addr])
        .args(args)
        .arg("--catalog")
        .arg(example_catalog())
        .arg("--database-url")
        .arg(format!("sqlite://{}", database.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for name in SERVE_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.spawn().unwrap()
}

/// Waits for a refusal: the exit status must be a failure; its stderr.
fn refused(mut child: Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(!status.success(), "serve started: {stderr}");
            return stderr;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve neither started to refuse nor exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request with `Connection: close`; the status.
fn status_of(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = r#"{"reason": "review"}"#;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// Waits until `serve` answers `/healthz`.
fn wait_until_serving(child: &mut Child, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            panic!("serve exited with {status}: {stderr}");
        }
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status_of(addr, "GET", "/healthz", None), 200);
}

#[test]
fn beyond_loopback_serve_refuses_the_development_secret_and_an_open_api() {
    let public = format!("0.0.0.0:{}", free_port());
    let tokens = ("SUBLEDGER_API_TOKENS", "tok_read".to_owned());

    let stderr = refused(serve(
        &public,
        &[],
        &[
            ("SUBLEDGER_WEBHOOK_SECRETS", DEVELOPMENT_SECRET.to_owned()),
            tokens.clone(),
        ],
    ));
    assert!(stderr.contains("development webhook secret"), "{stderr}");
    assert!(
        !stderr.contains(DEVELOPMENT_SECRET),
        "a secret was printed: {stderr}"
    );

    // One of two rotating secrets is enough to refuse.
    let stderr = refused(serve(
        &public,
        &[],
        &[
            (
                "SUBLEDGER_WEBHOOK_SECRETS",
                format!("{SECRET},{DEVELOPMENT_SECRET}"),
            ),
            tokens.clone(),
        ],
    ));
    assert!(stderr.contains("development webhook secret"), "{stderr}");

    let stderr = refused(serve(
        &public,
        &[],
        &[("SUBLEDGER_WEBHOOK_SECRETS", SECRET.to_owned())],
    ));
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");

    // A secret given twice, directly and as a file, is a guess this refuses to make.
    let file = scratch_file("secret", SECRET);
    let stderr = refused(serve(
        &public,
        &[],
        &[
            ("SUBLEDGER_WEBHOOK_SECRETS", SECRET.to_owned()),
            ("SUBLEDGER_WEBHOOK_SECRETS_FILE", file.display().to_string()),
            tokens.clone(),
        ],
    ));
    assert!(stderr.contains("both set"), "{stderr}");
    let missing = std::env::temp_dir().join("subledger-no-such-secret-file");
    let stderr = refused(serve(
        &public,
        &[],
        &[
            (
                "SUBLEDGER_WEBHOOK_SECRETS_FILE",
                missing.display().to_string(),
            ),
            tokens,
        ],
    ));
    assert!(
        stderr.contains("SUBLEDGER_WEBHOOK_SECRETS_FILE"),
        "{stderr}"
    );
    std::fs::remove_file(file).unwrap();
}

#[test]
fn on_loopback_the_development_setup_still_serves() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = serve(
        &addr.to_string(),
        &[],
        &[("SUBLEDGER_WEBHOOK_SECRETS", DEVELOPMENT_SECRET.to_owned())],
    );
    wait_until_serving(&mut child, addr);
    // Reads are open; a hold is refused without an admin token configured.
    assert_eq!(
        status_of(addr, "GET", "/v1/customers/cus_x/entitlements", None),
        404
    );
    assert_eq!(
        status_of(addr, "POST", "/v1/customers/cus_x/holds", None),
        403
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn tokens_from_files_grant_their_scopes_on_a_public_address() {
    let port = free_port();
    let reach: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let secret = scratch_file("secret", &format!("{SECRET}\n"));
    let read = scratch_file("read", "tok_read_1,tok_read_2\n");
    let admin = scratch_file("admin", "tok_admin\n");
    let mut child = serve(
        &format!("0.0.0.0:{port}"),
        &[],
        &[
            (
                "SUBLEDGER_WEBHOOK_SECRETS_FILE",
                secret.display().to_string(),
            ),
            ("SUBLEDGER_API_TOKENS_FILE", read.display().to_string()),
            ("SUBLEDGER_ADMIN_TOKENS_FILE", admin.display().to_string()),
        ],
    );
    wait_until_serving(&mut child, reach);
    let entitlements = "/v1/customers/cus_x/entitlements";
    assert_eq!(status_of(reach, "GET", entitlements, None), 401);
    assert_eq!(
        status_of(reach, "GET", entitlements, Some("tok_read_2")),
        404
    );
    assert_eq!(
        status_of(reach, "GET", entitlements, Some("tok_admin")),
        404
    );
    let holds = "/v1/customers/cus_x/holds";
    assert_eq!(status_of(reach, "POST", holds, Some("tok_read_1")), 403);
    // Authorized; the customer is unknown.
    assert_eq!(status_of(reach, "POST", holds, Some("tok_admin")), 404);
    child.kill().unwrap();
    child.wait().unwrap();
    for file in [secret, read, admin] {
        std::fs::remove_file(file).unwrap();
    }
}

#[test]
fn allow_unauthenticated_opens_reads_on_a_public_address_but_not_writes() {
    let port = free_port();
    let reach: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = serve(
        &format!("0.0.0.0:{port}"),
        &["--allow-unauthenticated"],
        &[("SUBLEDGER_WEBHOOK_SECRETS", SECRET.to_owned())],
    );
    wait_until_serving(&mut child, reach);
    assert_eq!(
        status_of(reach, "GET", "/v1/customers/cus_x/entitlements", None),
        404
    );
    assert_eq!(
        status_of(reach, "POST", "/v1/customers/cus_x/holds", Some("anything")),
        403
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

fn repository_file(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(name),
    )
    .unwrap()
}

/// The README's production section is the compose file as shipped, and that file has no
/// default secret, publishes Subledger on loopback only, keeps PostgreSQL unpublished, and
/// waits for a PostgreSQL that answers over TCP.
#[test]
fn the_shipped_compose_file_is_safe_by_default_and_is_the_one_the_readme_shows() {
    let compose = repository_file("docker-compose.yml");
    let readme = repository_file("README.md");
    assert!(
        readme.contains(&format!("```yaml\n{compose}```")),
        "README.md's production section differs from docker-compose.yml"
    );
    let root = marked_yaml::parse_yaml(0, &compose).unwrap();
    let services = root.as_mapping().unwrap().get_mapping("services").unwrap();
    let subledger = services.get_mapping("subledger").unwrap();
    let environment = subledger.get_mapping("environment").unwrap();
    for (name, value) in environment.iter() {
        let (name, value) = (name.as_str(), value.as_scalar().unwrap().as_str());
        assert!(!value.contains("whsec_"), "{name} carries a webhook secret");
        assert!(
            ![
                "SUBLEDGER_WEBHOOK_SECRETS",
                "SUBLEDGER_API_TOKENS",
                "SUBLEDGER_ADMIN_TOKENS"
            ]
            .contains(&name),
            "{name} is a variable; secrets come from files"
        );
    }
    for file in [
        "SUBLEDGER_WEBHOOK_SECRETS_FILE",
        "SUBLEDGER_API_TOKENS_FILE",
        "SUBLEDGER_ADMIN_TOKENS_FILE",
    ] {
        assert!(environment.get_scalar(file).is_some(), "{file} is not set");
    }
    assert!(
        environment
            .get_scalar("SUBLEDGER_ALLOW_UNAUTHENTICATED")
            .is_none(),
        "the shipped setup opens /v1"
    );
    let secrets = root.as_mapping().unwrap().get_mapping("secrets").unwrap();
    for (name, secret) in secrets.iter() {
        assert!(
            secret.as_mapping().unwrap().get_scalar("file").is_some(),
            "secret {} has no file",
            name.as_str()
        );
    }
    let ports = subledger.get_sequence("ports").unwrap();
    for port in ports.iter() {
        let port = port.as_scalar().unwrap().as_str();
        assert!(
            port.starts_with("${SUBLEDGER_PUBLISH:-127.0.0.1:"),
            "published beyond loopback by default: {port}"
        );
    }
    let postgres = services.get_mapping("postgres").unwrap();
    assert!(
        postgres.get_sequence("ports").is_none(),
        "PostgreSQL is published"
    );
    let check: Vec<&str> = postgres
        .get_mapping("healthcheck")
        .unwrap()
        .get_sequence("test")
        .unwrap()
        .iter()
        .map(|part| part.as_scalar().unwrap().as_str())
        .collect();
    assert!(
        check.contains(&"pg_isready") && check.windows(2).any(|w| w == ["-h", "127.0.0.1"]),
        "the health check does not ask over TCP: {check:?}"
    );
    for service in [subledger, postgres] {
        assert_eq!(
            service.get_scalar("restart").map(|r| r.as_str()),
            Some("unless-stopped")
        );
    }
    let depends = subledger
        .get_mapping("depends_on")
        .unwrap()
        .get_mapping("postgres")
        .unwrap();
    assert_eq!(
        depends.get_scalar("condition").map(|c| c.as_str()),
        Some("service_healthy")
    );
}
