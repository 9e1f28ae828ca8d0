//! `onair check` and `onair run` on good and broken config files: the exit code, and every
//! error on its own line, led by its key path, all in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{check, free_ports, onair_bin, TOKEN};

const REFERENCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/onair.toml");
const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");

/// A config with many independent mistakes. `{http}` and `{admin}` are filled with free ports
/// so that, should `onair run` wrongly start with it, it binds nothing that matters.
const BROKEN: &str = r#"
[node]
id = "edge-hn-1"
grace_period = "10"

[listen]
http = ["127.0.0.1:{http}"]
https = ["127.0.0.1:8443"]
admin = "127.0.0.1:{admin}"

[admin]
token_file = "admin.token"

[cache]
memory = "1GiB"
disk_path = "/var/cache/onair"
disk = "plenty"

[[site]]
name = "portal"
hosts = ["daihoi.example.vn"]
pool = "portl"
maintenance_page = "missing.html"

[[pool]]
name = "portal"
  [[pool.origin]]
  addr = "10.0.1.10:8080"

[[pool]]
name = "api"
  [[pool.origin]]
  addr = "api.daihoi.example.vn"
  tier = 300
  [[pool.origin]]
  adrr = "10.0.2.11:9000"
"#;

/// The key path of every error in [`BROKEN`], as each output line starts.
const BROKEN_PATHS: &[&str] = &[
    "cache.disk: ",
    "pool[1].origin[1].adrr: ",
    "node.grace_period: ",
    "listen.https: ",
    "pool[1].origin[0].tier: ",
    "pool[1].origin[0].addr: ",
    "pool[1].origin[1].addr: ",
    "site[0].pool: ",
    "site[0].maintenance_page: ",
];

fn broken() -> String {
    let [http, admin] = free_ports::<2>();
    BROKEN
        .replace("{http}", &http.to_string())
        .replace("{admin}", &admin.to_string())
}

/// Asserts that `lines` hold exactly one line per expected key path, whatever the order.
fn assert_one_line_per_path(lines: &[&str], paths: &[&str]) {
    assert_eq!(
        lines.len(),
        paths.len(),
        "expected {} error lines, got:\n{}",
        paths.len(),
        lines.join("\n")
    );
    for path in paths {
        let n = lines.iter().filter(|l| l.starts_with(path)).count();
        assert_eq!(
            n,
            1,
            "expected one line starting {path:?} in:\n{}",
            lines.join("\n")
        );
    }
}

/// Writes `text` as `onair.toml` in a fresh directory, next to a valid `admin.token`.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), TOKEN).unwrap();
    let path = dir.path().join("onair.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Runs `onair ARGS...` to completion, killing it if it is still running after `limit`.
fn run_to_end(args: &[&str], config: &Path, limit: Duration) -> Output {
    let mut child = Command::new(onair_bin())
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "onair {args:?} was still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn reference_config_passes_check() {
    let text = std::fs::read_to_string(REFERENCE).unwrap();
    assert_eq!(check(&text), (0, "config ok\n".to_owned()));
}

#[test]
fn reference_config_documents_every_key() {
    let text = std::fs::read_to_string(REFERENCE).unwrap();
    // Keys that need files on the target machine are shown commented out; still documented.
    let documented = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start().trim_start_matches('#').trim_start();
            l.starts_with(&format!("{key} =")) || l.contains(&format!(" {key} = "))
        })
    };
    for section in [
        "[node]",
        "[listen]",
        "[admin]",
        "[log]",
        "[cache]",
        "[[site]]",
        "[[site.route]]",
        "[[pool]]",
        "[[pool.origin]]",
        "[tls]",
        "[protect]",
        "[protect.attack]",
    ] {
        assert!(
            text.contains(section),
            "{section} is not in the reference config"
        );
    }
    for key in [
        "id",
        "region",
        "threads",
        "grace_period",
        "state_dir", // [node]
        "http",
        "https",
        "metrics",
        "admin",      // [listen]
        "token_file", // [admin]
        "access",
        "level", // [log]
        "memory",
        "disk_path",
        "disk",
        "max_object",
        "lock_timeout",
        "stale_while_revalidate",
        "stale_if_error",
        "purge_from", // [cache]
        "force_stale_if_error",
        "cache",
        "query",
        "default_ttl", // [[site]], [[site.route]]
        "name",
        "hosts",
        "pool",
        "maintenance_page",
        "path", // [[site]], [[site.route]]
        "tls",
        "sni",
        "host",
        "connect_timeout",
        "read_timeout",
        "max_attempts",
        "health",
        "interval",
        "timeout",
        "fall",
        "rise", // [[pool]] and its health table
        "addr",
        "tier",
        "weight", // [[pool.origin]]
        "proxy_protocol",
        "redirect_http",
        "hsts",
        "cert",
        "key", // [listen], [tls]
        "trusted_proxies",
        "tiers",
        "select",
        "fallback",
        "shields",
        "min_ttl",
        "max_ttl",
        "deny",
        "allow",
        "rate",
        "burst",
        "max_header",
        "max_headers",
        "max_uri",
        "max_body",
        "keepalive_timeout",
        "keepalive_requests",
        "max_connections_per_ip",
        "header_timeout",
        "body_timeout",
        "min_upload_rate",
        "send_timeout",
        "send_buffer",
        "tarpit",
        "shed_at", // [protect]
        "mode",
        "trigger_rps",
        "cooldown",
        "challenge",
        "difficulty",
        "clearance",
        "key_file", // [protect.attack]
    ] {
        assert!(
            documented(key),
            "{key} is not documented in the reference config"
        );
    }
}

#[test]
fn demo_config_passes_once_its_placeholders_are_filled() {
    // As is, demo.toml holds {{...}} placeholders that `onair demo` fills in; it is not meant
    // to pass `onair check` verbatim. Filled the way the demo fills it, it must.
    let text = std::fs::read_to_string(DEMO)
        .unwrap()
        .replace("{{STATE_DIR}}", ".")
        .replace("{{PRIMARY}}", "127.0.0.1:18081")
        .replace("{{BACKUP}}", "127.0.0.1:18082");
    assert_eq!(check(&text), (0, "config ok\n".to_owned()));
}

#[test]
fn check_prints_every_error_with_its_key_path_in_one_run() {
    let (code, stdout) = check(&broken());
    assert_eq!(code, 1, "stdout:\n{stdout}");
    assert!(!stdout.contains("config ok"), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_one_line_per_path(&lines, BROKEN_PATHS);
    // Spot-check a few messages, including the exact example of the contract.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pool[1].origin[0].addr: ")
                && l.contains(
                    "\"api.daihoi.example.vn\" is not an IP:port address or a DNS name with a port"
                )),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("site[0].pool: ") && l.contains("portl")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pool[1].origin[1].adrr: ") && l.contains("unknown key")),
        "{stdout}"
    );
}

#[test]
fn check_fails_on_a_single_error() {
    let text = std::fs::read_to_string(REFERENCE)
        .unwrap()
        .replace("addr = \"10.1.1.10:8080\"", "addr = \"10.1.1.10\"");
    let (code, stdout) = check(&text);
    assert_eq!(code, 1, "stdout:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_one_line_per_path(&lines, &["pool[0].origin[2].addr: "]);
}

#[test]
fn check_applies_command_line_overrides() {
    let (_dir, path) = write_config(&std::fs::read_to_string(REFERENCE).unwrap());
    let out = run_to_end(
        &["check", "--region", "hcm", "--node-id", "edge-hcm-1"],
        &path,
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "config ok\n");

    let out = run_to_end(
        &["check", "--node-id", "edge hcm 1"],
        &path,
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_one_line_per_path(&lines, &["node.id: "]);
}

#[test]
fn check_of_a_missing_file_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_end(
        &["check"],
        &dir.path().join("nope.toml"),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cannot read"), "{stdout}");
}

#[test]
fn run_refuses_a_broken_config_with_the_same_errors_on_stderr() {
    let (_dir, path) = write_config(&broken());

    let checked = run_to_end(&["check"], &path, Duration::from_secs(20));
    assert_eq!(checked.status.code(), Some(1));
    let check_out = String::from_utf8_lossy(&checked.stdout).into_owned();

    let ran = run_to_end(&["run"], &path, Duration::from_secs(20));
    assert_eq!(
        ran.status.code(),
        Some(1),
        "onair run should refuse to start"
    );
    let stderr = String::from_utf8_lossy(&ran.stderr).into_owned();
    // Every error line of `check` is on stderr too, and nothing else but a heading.
    let error_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("onair: "))
        .collect();
    assert_one_line_per_path(&error_lines, BROKEN_PATHS);
    let check_lines: Vec<&str> = check_out.lines().collect();
    assert_eq!(
        error_lines, check_lines,
        "run and check disagree:\n{stderr}\n---\n{check_out}"
    );
    assert!(String::from_utf8_lossy(&ran.stdout).is_empty());
}

/// A listener address another process holds: `onair run` waits for it as Pingora would, then
/// exits naming it, rather than run on without that listener.
#[test]
fn run_exits_when_a_listen_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[node]\nstate_dir = \"{}\"\n[listen]\nhttp = [\"{addr}\"]\n\
         [[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"127.0.0.1:9\"\n",
        dir.path().join("state").display()
    );
    let (_config_dir, path) = write_config(&text);
    // It waits up to 30 s for the address, as Pingora would, then gives up.
    let ran = run_to_end(&["run"], &path, Duration::from_secs(60));
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(stderr.contains("is in use; waiting for it"), "{stderr}");
    assert!(
        stderr.contains(&format!("listen.http: cannot listen on {addr}: in use")),
        "{stderr}"
    );
    drop(taken);
    // Two listeners of the config that overlap: a config error, at once.
    let port = addr.port();
    let overlapping = text.replace(
        &format!("http = [\"{addr}\"]"),
        &format!("http = [\"127.0.0.1:{port}\"]\nmetrics = \"0.0.0.0:{port}\""),
    );
    let (_config_dir, path) = write_config(&overlapping);
    let ran = run_to_end(&["check"], &path, Duration::from_secs(20));
    assert_eq!(ran.status.code(), Some(1), "{ran:?}");
    let stdout = String::from_utf8_lossy(&ran.stdout);
    assert!(
        stdout.contains(&format!(
            "listen.metrics: 0.0.0.0:{port} overlaps another listener"
        )),
        "{stdout}"
    );
}
