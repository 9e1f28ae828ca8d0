//! The admin API: open probes, bearer-token auth on everything else, status, metrics text.

use std::time::Duration;

use bytes::Bytes;

use crate::common::*;

fn site(origin: &Origin) -> String {
    one_site(origin.addr, "", "region = \"hn\"")
}

#[tokio::test]
async fn token_guards_everything_but_probes() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(Setup::new(site(&origin))).await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(onair.admin, "x", path).await.unwrap().status,
            200,
            "{path}"
        );
    }
    let wrong = [
        vec![],
        vec![("Authorization", "Bearer nope")],
        vec![("Authorization", "Bearer test-token-0123456789abcdeX")],
        vec![("Authorization", "test-token-0123456789abcdef")],
    ];
    // A reload that would change things: it must not happen without the token.
    std::fs::write(&onair.config_path, "broken = true").unwrap();
    for headers in &wrong {
        for (method, path) in [("GET", "/status"), ("POST", "/reload")] {
            let r = request(onair.admin, method, "x", path, headers, Bytes::new())
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {headers:?}");
        }
    }
    assert_eq!(
        onair
            .metric("onair_config_reloads_total{result=\"error\"}")
            .await,
        Some(0.0)
    );

    let r = onair.admin("GET", "/status").await;
    assert_eq!(r.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(status["node"], "edge-test");
    assert_eq!(status["config_version"], 1);
    assert_eq!(status["pools"][0]["name"], "p");
    assert_eq!(
        status["pools"][0]["origins"][0]["addr"],
        origin.addr.to_string()
    );
    assert_eq!(status["pools"][0]["origins"][0]["up"], true);
    assert_eq!(status["pools"][0]["origins"][0]["state"], "up");
    assert_eq!(status["pools"][0]["inflight"], 0);
    assert_eq!(status["pools"][0]["max_inflight"], 1024);
    assert!(status["cache"]["memory"]["objects"].is_u64());
    assert!(status["cache"]["disk"].is_null(), "no disk tier configured");
    assert_eq!(onair.admin("GET", "/nope").await.status, 404);
    assert_eq!(onair.admin("GET", "/reload").await.status, 405);
}

#[tokio::test]
async fn without_token_file_only_probes_answer() {
    let origin = Origin::start("o").await;
    let mut setup = Setup::new(site(&origin));
    setup.token = false;
    let onair = Onair::start(setup).await;
    assert_eq!(get(onair.admin, "x", "/healthz").await.unwrap().status, 200);
    assert_eq!(onair.admin("GET", "/status").await.status, 403);
    assert_eq!(onair.admin("POST", "/reload").await.status, 403);
}

#[tokio::test]
async fn metrics_have_the_contract_names_and_pass_promtool() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(Setup::new(site(&origin))).await;
    for _ in 0..3 {
        assert_eq!(get(onair.http, "a", "/").await.unwrap().status, 200);
    }
    // Requests are counted in the logging phase, just after the client has its answer.
    let counted = "onair_requests_total{cache=\"miss\",code=\"2xx\",site=\"s\"}";
    assert!(
        eventually(Duration::from_secs(5), || async {
            onair.metric(counted).await == Some(3.0)
        })
        .await
    );
    let text = onair.metrics_text().await;
    for name in [
        "onair_requests_total{cache=\"miss\",code=\"2xx\",site=\"s\"} 3",
        "onair_request_duration_seconds_bucket",
        "onair_origin_up{",
        "onair_origin_requests_total{",
        "onair_origin_duration_seconds_bucket",
        "onair_config_reloads_total{result=\"ok\"} 0",
        "onair_config_version 1",
        "onair_failovers_total{pool=\"p\"} 0",
        "onair_build_info{version=",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    // No raw path or client address ever becomes a label.
    assert!(
        !text.contains("127.0.0.1\""),
        "client address leaked into labels"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("onair_") && l.contains("path=")),
        "a path label"
    );
    promtool_check(&text);
}

/// `promtool check metrics` must be clean. CI installs promtool; a developer machine without
/// it skips this part with a note rather than failing.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI: .ci/run must install it"
        );
        eprintln!("promtool not installed: skipping the promtool check");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// By default neither `/status` nor the metrics publish origin addresses (the metrics listener
/// and a leaked status page must not map what an attacker would reach around the edge): an
/// origin is its `name`, or `origin-N`.
#[tokio::test]
async fn origin_addresses_stay_private_by_default() {
    let origin = Origin::start("o").await;
    let second = Origin::start("o2").await;
    let mut setup = Setup::new(format!(
        "{}  [[pool.origin]]\n  addr = \"{}\"\n  name = \"backup-hn\"\n",
        site(&origin),
        second.addr
    ));
    setup.admin_extra = String::new();
    let onair = Onair::start(setup).await;
    let status = onair.admin("GET", "/status").await.text();
    for addr in [origin.addr, second.addr] {
        assert!(!status.contains(&addr.to_string()), "{status}");
        assert!(!status.contains(&addr.port().to_string()), "{status}");
    }
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pools"][0]["origins"][0]["name"], "origin-0");
    assert_eq!(status["pools"][0]["origins"][1]["name"], "backup-hn");
    let metrics = onair.metrics_text().await;
    assert!(
        metrics.contains("onair_origin_up{origin=\"origin-0\",pool=\"p\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("origin=\"backup-hn\""));
    assert!(!metrics.contains(&origin.addr.to_string()));
}

/// The token is checked before any body is read, a body over the limit is refused from its
/// declared length, and the connections are capped.
#[tokio::test]
async fn the_admin_api_reads_no_body_for_strangers_and_caps_connections() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(Setup::new(site(&origin))).await;
    // A stranger announcing a large body and sending none: answered at once, not waited for.
    let head = "POST /purge HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n";
    let started = std::time::Instant::now();
    let answer = raw_exchange(onair.admin, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it waited for the body"
    );
    // With the token, a declared body over 1 MiB is refused without reading it.
    let head = format!(
        "POST /purge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 5000000\r\n\r\n"
    );
    let answer = raw_exchange(onair.admin, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Idle connections from one address take at most 8 slots: the next from it is closed at
    // once, while an operator on another address still gets in.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(onair.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = raw_exchange(
        onair.admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(answer, "", "a ninth connection from one address was served");
    let admin_from_elsewhere = std::net::SocketAddr::from(([127, 0, 0, 1], onair.admin.port()));
    let mut stream = tcp_from(admin_from_elsewhere, [127, 0, 0, 9])
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    drop(idle);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get(onair.admin, "x", "/healthz")
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await
    );
}

/// Scoped tokens: a newsdesk token with `purge` purges but cannot switch attack mode or read
/// the status; a dashboard token with `read` reads but cannot purge; a wrong token gets 401.
/// Every call that changes something, and every refused one, is in the audit log (who, from
/// where, what, the result), which survives a kill -9 right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_and_an_audit_log_that_survives_a_kill() {
    let origin = Origin::start("o").await;
    let mut setup = Setup::new(one_site(origin.addr, "", ""))
        .with_file("newsdesk.token", "newsdesk-token-0123456789")
        .with_file("dashboard.token", "dashboard-token-0123456789");
    setup.admin_extra = "origin_addresses = true\ntokens = [\
        { name = \"newsdesk\", file = \"newsdesk.token\", scopes = [\"purge\"] }, \
        { name = \"dashboard\", file = \"dashboard.token\", scopes = [\"read\"] }]\n"
        .into();
    let n = Onair::start(setup).await;
    let call =
        |token: &'static str, method: &'static str, path: &'static str, body: &'static str| {
            let admin = n.admin;
            async move {
                let auth = format!("Bearer {token}");
                request(
                    admin,
                    method,
                    "admin",
                    path,
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    Bytes::from_static(body.as_bytes()),
                )
                .await
                .unwrap()
                .status
            }
        };
    let newsdesk = "newsdesk-token-0123456789";
    let dashboard = "dashboard-token-0123456789";
    let purge = r#"{"urls": ["http://a/story"]}"#;
    assert_eq!(call(newsdesk, "POST", "/purge", purge).await, 200);
    assert_eq!(
        call(newsdesk, "POST", "/attack-mode", r#"{"mode": "on"}"#).await,
        403
    );
    assert_eq!(call(newsdesk, "GET", "/status", "").await, 403);
    assert_eq!(call(dashboard, "GET", "/status", "").await, 200);
    assert_eq!(call(dashboard, "POST", "/purge", purge).await, 403);
    assert_eq!(
        call("guessed-token-0123456789", "POST", "/reload", "").await,
        401
    );
    // The file's token_file token has every scope.
    let r = n.admin_post("/attack-mode", r#"{"mode": "off"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        n.metric("onair_admin_calls_total{outcome=\"forbidden\"}")
            .await,
        Some(3.0)
    );
    // The PURGE method, from an address `cache.purge_from` allows: audited too.
    let r = request(n.http, "PURGE", "a", "/story", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    n.signal("KILL");
    let log = std::fs::read_to_string(n.dir.path().join("state/audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<(String, String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_owned(),
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expect = |who: &str, method: &str, path: &str, status: u64| {
        (who.to_owned(), method.to_owned(), path.to_owned(), status)
    };
    assert_eq!(
        seen,
        vec![
            expect("newsdesk", "POST", "/purge", 200),
            expect("newsdesk", "POST", "/attack-mode", 403),
            expect("newsdesk", "GET", "/status", 403),
            expect("dashboard", "POST", "/purge", 403),
            expect("-", "POST", "/reload", 401),
            expect("admin", "POST", "/attack-mode", 200),
            expect("purge_from", "PURGE", "a/story", 200),
        ],
        "{log}"
    );
    assert!(entries.iter().all(|e| e["from"] == "127.0.0.1"), "{log}");
    assert!(
        entries[1]["result"].as_str().unwrap().contains("operate"),
        "{log}"
    );
    assert!(
        !log.contains(newsdesk) && !log.contains(dashboard),
        "a secret was logged"
    );
}
