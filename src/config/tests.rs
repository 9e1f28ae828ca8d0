//! Unit tests of config validation.
//!
//! Every error test asserts the exact key path the operator will see, because `onair check`
//! prints `path: message` and operators (and scripts) rely on finding the key by it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::*;

/// A base directory that does not exist: configs without file references never touch it.
const NO_DIR: &str = "/nonexistent/onair-config-tests";

const TOKEN: &str = "0123456789abcdef-admin-token";

/// The smallest valid config: one listener, one site, one pool with one origin.
const MINIMAL: &str = r#"
[listen]
http = ["127.0.0.1:8080"]

[[site]]
name = "portal"
hosts = ["daihoi.example.vn"]
pool = "portal"

[[pool]]
name = "portal"

  [[pool.origin]]
  addr = "10.0.1.10:8080"
"#;

/// A listener, to prefix to configs that test sites and pools.
const LISTEN: &str = "[listen]\nhttp = [\"127.0.0.1:8080\"]\n";

/// A valid pool named `portal`, to suffix to configs that test sites.
const PORTAL_POOL: &str = "
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
";

/// A valid site using pool `portal`, to combine with configs that test pools.
const PORTAL_SITE: &str = "
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
";

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, Path::new(NO_DIR), &Overrides::default())
}

fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
    Config::parse(text, dir, &Overrides::default())
}

/// Every error of a config that must fail.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("config was accepted but should fail:\n{text}"),
        Err(e) => e.0,
    }
}

/// The one error of a config that must fail with exactly one problem.
fn only_error(text: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected exactly one error, got {errs:#?}");
    errs.into_iter().next().unwrap()
}

/// Asserts that exactly one error was reported, at `path`, with `needle` in its message.
fn assert_only(text: &str, path: &str, needle: &str) {
    let e = only_error(text);
    assert_eq!(e.path, path, "wrong path in {e:?}");
    assert!(
        e.message.contains(needle),
        "message of {path} should contain {needle:?}: {:?}",
        e.message
    );
}

fn has(errs: &[ConfigError], path: &str, needle: &str) -> bool {
    errs.iter()
        .any(|e| e.path == path && e.message.contains(needle))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// === Valid configs ===

#[test]
fn minimal_config_parses() {
    parse(MINIMAL).unwrap();
}

#[test]
fn full_config_parses_with_typed_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), format!("  {TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("maintenance.html"), "<h1>Back soon</h1>").unwrap();
    let text = r#"
[node]
id = "edge-hn-1"
region = "hn"
threads = 4
grace_period = "1m30s"
state_dir = "/var/lib/onair-test"

[listen]
http = ["0.0.0.0:80", "[::]:8080"]
metrics = "127.0.0.1:9090"
admin = "127.0.0.1:9091"

[admin]
token_file = "admin.token"

[log]
access = "access.log"
level = "warn"

[[site]]
name = "portal"
hosts = ["Daihoi.Example.VN", "*.daihoi.example.vn"]
pool = "portal"
maintenance_page = "maintenance.html"

  [[site.route]]
  path = "/api/"
  pool = "api"

  [[site.route]]
  path = "/live/"

[[site]]
name = "static"
hosts = ["static.example.vn"]
pool = "portal"

[[pool]]
name = "portal"
tls = true
sni = "origin.daihoi.example.vn"
host = "www.daihoi.example.vn"
connect_timeout = "500ms"
read_timeout = "20s"
max_attempts = 4
health = { path = "/healthz", interval = "3s", timeout = "700ms", fall = 3, rise = 5 }

  [[pool.origin]]
  addr = "10.0.1.10:8080"
  region = "hn"
  tier = 0
  weight = 10

  [[pool.origin]]
  addr = "10.1.1.10:8080"
  region = "hcm"

  [[pool.origin]]
  addr = "[2001:db8::1]:443"
  tier = 1
  weight = 1000

[[pool]]
name = "api"
  [[pool.origin]]
  addr = "10.0.2.10:9000"
"#;
    let c = parse_in(text, dir.path()).unwrap();

    assert_eq!(c.node.id, "edge-hn-1");
    assert_eq!(c.node.region, "hn");
    assert_eq!(c.node.threads, 4);
    assert_eq!(c.node.grace_period, Duration::from_secs(90));
    assert_eq!(c.node.state_dir, Path::new("/var/lib/onair-test"));

    assert_eq!(c.listen.http, vec![addr("0.0.0.0:80"), addr("[::]:8080")]);
    assert_eq!(c.listen.metrics, Some(addr("127.0.0.1:9090")));
    assert_eq!(c.listen.admin, Some(addr("127.0.0.1:9091")));

    // The token is trimmed, and relative files are taken from the base directory.
    let hash = |t: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        <[u8; 32]>::try_from(d.as_ref()).unwrap()
    };
    assert_eq!(c.admin.tokens[0].hash, hash(TOKEN));
    assert!(
        !format!("{:?}", c.admin).contains(TOKEN),
        "token leaks in Debug"
    );
    assert_eq!(c.log.access, AccessLog::File(dir.path().join("access.log")));
    assert_eq!(c.log.level, "warn");

    assert_eq!(c.sites.len(), 2);
    let portal = &c.sites[0];
    assert_eq!(portal.name, "portal");
    assert_eq!(
        portal.hosts,
        vec!["daihoi.example.vn", "*.daihoi.example.vn"]
    );
    assert_eq!(portal.pool, "portal");
    assert_eq!(
        portal.maintenance_page.as_deref(),
        Some(&b"<h1>Back soon</h1>"[..])
    );
    assert_eq!(portal.routes.len(), 2);
    assert_eq!(portal.routes[0].path, "/api/");
    assert_eq!(portal.routes[0].pool.as_deref(), Some("api"));
    assert_eq!(portal.routes[1].path, "/live/");
    assert_eq!(portal.routes[1].pool, None);
    assert_eq!(c.sites[1].name, "static");
    assert!(c.sites[1].maintenance_page.is_none());
    assert!(c.sites[1].routes.is_empty());

    assert_eq!(c.pools.len(), 2);
    let p = c.pool("portal").unwrap();
    assert!(p.tls);
    assert_eq!(p.sni.as_deref(), Some("origin.daihoi.example.vn"));
    assert_eq!(p.host.as_deref(), Some("www.daihoi.example.vn"));
    assert_eq!(p.connect_timeout, Duration::from_millis(500));
    assert_eq!(p.read_timeout, Duration::from_secs(20));
    assert_eq!(p.max_attempts, 4);
    assert_eq!(
        p.health,
        Some(Health {
            path: "/healthz".into(),
            interval: Duration::from_secs(3),
            timeout: Duration::from_millis(700),
            fall: 3,
            rise: 5,
        })
    );
    assert_eq!(
        p.origins,
        vec![
            Origin {
                addr: OriginAddr::Ip(addr("10.0.1.10:8080")),
                name: None,
                region: Some("hn".into()),
                tier: 0,
                weight: 10,
            },
            Origin {
                addr: OriginAddr::Ip(addr("10.1.1.10:8080")),
                name: None,
                region: Some("hcm".into()),
                tier: 0,
                weight: 1,
            },
            Origin {
                addr: OriginAddr::Ip(addr("[2001:db8::1]:443")),
                name: None,
                region: None,
                tier: 1,
                weight: 1000,
            },
        ]
    );
    assert!(c.pool("api").is_some());
    assert!(c.pool("nope").is_none());
}

#[test]
fn defaults_apply_when_keys_are_omitted() {
    let c = parse(MINIMAL).unwrap();
    // node.id defaults to the host name (when it is a valid name) or "onair".
    assert!(!c.node.id.is_empty());
    assert_eq!(c.node.region, "");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.node.threads, cores);
    assert_eq!(c.node.grace_period, Duration::from_secs(10));
    assert_eq!(c.node.state_dir, Path::new("/var/lib/onair"));
    assert_eq!(c.listen.metrics, None);
    assert_eq!(c.listen.admin, None);
    assert!(c.admin.tokens.is_empty());
    assert_eq!(c.log.access, AccessLog::Stdout);
    assert_eq!(c.log.level, "info");
    let p = &c.pools[0];
    assert!(!p.tls);
    assert_eq!(p.sni, None);
    assert_eq!(p.host, None);
    assert_eq!(p.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.read_timeout, Duration::from_secs(15));
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.health, None);
    assert_eq!(p.origins[0].tier, 0);
    assert_eq!(p.origins[0].weight, 1);
    assert_eq!(p.origins[0].region, None);
    assert!(c.sites[0].maintenance_page.is_none());
}

#[test]
fn health_defaults_apply_inside_an_empty_health_table() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
health = {{}}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.pools[0].health,
        Some(Health {
            path: "/".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fall: 2,
            rise: 2,
        })
    );
}

#[test]
fn access_log_stdout_and_off() {
    let c = parse(&format!("[log]\naccess = \"stdout\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.log.access, AccessLog::Stdout);
    let c = parse(&format!("[log]\naccess = \"off\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.log.access, AccessLog::Off);
    let c = parse(&format!(
        "[log]\naccess = \"/var/log/onair/access.log\"\n{MINIMAL}"
    ))
    .unwrap();
    assert_eq!(
        c.log.access,
        AccessLog::File("/var/log/onair/access.log".into())
    );
}

#[test]
fn tls_with_host_only_or_sni_only_is_accepted() {
    for keys in [
        "sni = \"origin.example.vn\"",
        "host = \"origin.example.vn\"",
    ] {
        let text = format!(
            "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
tls = true
{keys}
  [[pool.origin]]
  addr = \"10.0.1.10:443\"
"
        );
        let c = parse(&text).unwrap();
        assert!(c.pools[0].tls);
    }
}

#[test]
fn wildcard_and_catch_all_hosts_are_accepted() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"*.daihoi.example.vn\", \"daihoi.example.vn\"]
pool = \"portal\"

[[site]]
name = \"default\"
hosts = [\"*\"]
pool = \"portal\"
"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.sites[1].hosts, vec!["*"]);
}

// === Unknown keys ===

#[test]
fn unknown_top_level_key() {
    assert_only(
        &format!("colour = \"red\"\n{MINIMAL}"),
        "colour",
        "unknown key",
    );
}

#[test]
fn route_query_modes() {
    let text = |mode: &str| {
        format!(
            "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"*\"]
pool = \"portal\"
  [[site.route]]
  path = \"/x/\"
  query = \"{mode}\"
"
        )
    };
    assert_eq!(
        parse(&text("sort")).unwrap().sites[0].routes[0].query,
        QueryKey::Sort
    );
    assert_eq!(
        parse(&text("drop")).unwrap().sites[0].routes[0].query,
        QueryKey::Drop
    );
    assert_only(&text("shuffle"), "site[0].route[0].query", "not one of");
}

#[test]
fn cache_section() {
    let c = parse(&format!(
        "{MINIMAL}\n[cache]\nmemory = \"1GiB\"\nmax_object = \"8MiB\"\nlock_timeout = \"3s\"\nstale_while_revalidate = \"30s\"\nstale_if_error = \"2d\"\n"
    ))
    .unwrap();
    assert_eq!(c.cache.memory, 1 << 30);
    assert_eq!(c.cache.max_object, 8 << 20);
    assert_eq!(c.cache.lock_timeout, Duration::from_secs(3));
    assert_eq!(c.cache.stale_while_revalidate, Duration::from_secs(30));
    assert_eq!(c.cache.stale_if_error, Duration::from_secs(2 * 86_400));
    // Defaults: 7 days of "always online".
    let d = parse(MINIMAL).unwrap();
    assert_eq!(d.cache.stale_if_error, Duration::from_secs(7 * 86_400));
    let errs = errors(&format!(
        "{MINIMAL}\n[cache]\nmemory = \"lots\"\nmax_object = \"5GiB\"\ndisk_path = \"relative/dir\"\n"
    ));
    assert!(has(&errs, "cache.memory", "not a size"), "{errs:#?}");
    assert!(has(&errs, "cache.max_object", "below 4GiB"), "{errs:#?}");
    assert!(
        !errs.iter().any(|e| e.path == "cache.disk_path"),
        "{errs:#?}"
    );
    let errs = errors(&format!("{MINIMAL}\n[cache]\ndisk = \"1GiB\"\n"));
    assert!(
        has(&errs, "cache.disk", "needs cache.disk_path"),
        "{errs:#?}"
    );
    let c = parse(&format!(
        "{MINIMAL}\n[cache]\ndisk_path = \"/var/cache/onair\"\ndisk = \"50GiB\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.cache.disk_path.as_deref(),
        Some(Path::new("/var/cache/onair"))
    );
    assert_eq!(c.cache.disk, 50 << 30);
    let errs = errors(&format!(
        "{MINIMAL}\n[cache]\npurge_from = [\"10.0.0.0/8\", \"10.0.0.0/40\", \"nowhere\"]\n"
    ));
    assert!(
        has(&errs, "cache.purge_from[1]", "prefix length"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "cache.purge_from[2]", "not an address range"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(d.cache.purge_from.len(), 2);
}

#[test]
fn unknown_key_in_a_section() {
    assert_only(
        &format!("[node]\nregoin = \"hn\"\n{MINIMAL}"),
        "node.regoin",
        "unknown key",
    );
    assert_only(
        &format!("[admin]\ntoken = \"inline-secret\"\n{MINIMAL}"),
        "admin.token",
        "unknown key",
    );
}

#[test]
fn unknown_key_in_a_pool_origin() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  [[pool.origin]]
  adrr = \"10.0.1.11:8080\"
"
    );
    let errs = errors(&text);
    assert!(
        has(&errs, "pool[0].origin[1].adrr", "unknown key"),
        "{errs:#?}"
    );
    // The misspelt key also leaves the origin without an address.
    assert!(
        has(&errs, "pool[0].origin[1].addr", "is required"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn unknown_key_in_a_route_and_in_health() {
    let text = format!(
        "{LISTEN}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
  [[site.route]]
  path = \"/api/\"
  cahce = false

[[pool]]
name = \"portal\"
health = {{ path = \"/healthz\", uri = \"/x\" }}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let errs = errors(&text);
    assert!(
        has(&errs, "site[0].route[0].cahce", "unknown key"),
        "{errs:#?}"
    );
    assert!(has(&errs, "pool[0].health.uri", "unknown key"), "{errs:#?}");
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

// === Values ===

#[test]
fn bad_durations() {
    assert_only(
        &format!("[node]\ngrace_period = \"10\"\n{MINIMAL}"),
        "node.grace_period",
        "needs a unit",
    );
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
connect_timeout = \"2 sec\"
read_timeout = \"0\"
health = {{ interval = \"fast\", timeout = \"0\" }}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let errs = errors(&text);
    assert!(has(&errs, "pool[0].connect_timeout", "2 sec"), "{errs:#?}");
    assert!(
        has(&errs, "pool[0].read_timeout", "more than 0"),
        "{errs:#?}"
    );
    assert!(has(&errs, "pool[0].health.interval", "fast"), "{errs:#?}");
    assert!(
        has(&errs, "pool[0].health.timeout", "more than 0"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

// No key of this version takes a size (`512MiB`): sizes arrive with [cache] and [protect].
// `units::tests` covers the size parser itself.

#[test]
fn bad_origin_address() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  [[pool.origin]]
  addr = \"origin.daihoi.example.vn\"
"
    );
    assert_only(&text, "pool[0].origin[1].addr", "not an IP:port");
}

#[test]
fn origins_by_dns_name() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[dns]
servers = [\"10.0.0.53\", \"10.0.0.54:5353\"]
min_ttl = \"10s\"
max_ttl = \"10m\"
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"Origin.DaiHoi.example.vn.:8080\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let cfg = Config::parse(&text, Path::new("."), &Overrides::default()).unwrap();
    assert_eq!(
        cfg.pools[0].origins[0].addr,
        OriginAddr::Name {
            host: "origin.daihoi.example.vn".into(),
            port: 8080
        }
    );
    assert_eq!(cfg.origin_names(), vec!["origin.daihoi.example.vn"]);
    assert_eq!(
        cfg.dns.servers,
        vec![addr("10.0.0.53:53"), addr("10.0.0.54:5353")]
    );
    assert_eq!(cfg.dns.max_ttl, Duration::from_secs(600));
    let bad = format!("{LISTEN}{PORTAL_SITE}\n[dns]\nservers = [\"dns.example\"]\nmin_ttl = \"1m\"\nmax_ttl = \"10s\"\n[[pool]]\nname = \"portal\"\n  [[pool.origin]]\n  addr = \"10.0.1.10:8080\"\n");
    let errs = Config::parse(&bad, Path::new("."), &Overrides::default()).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["dns.servers[0]", "dns.max_ttl"], "{errs:#?}");
    // Bounded above: a TTL of years, or a timeout of an hour, is a typo.
    let huge = format!("{LISTEN}{PORTAL_SITE}\n[dns]\nmin_ttl = \"400d\"\nmax_ttl = \"500d\"\ntimeout = \"1h\"\n[[pool]]\nname = \"portal\"\n  [[pool.origin]]\n  addr = \"10.0.1.10:8080\"\n");
    let errs = Config::parse(&huge, Path::new("."), &Overrides::default()).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["dns.min_ttl", "dns.max_ttl", "dns.timeout"],
        "{errs:#?}"
    );
}

#[test]
fn origin_without_address() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  region = \"hn\"
"
    );
    assert_only(&text, "pool[0].origin[0].addr", "is required");
}

#[test]
fn origin_listed_twice_in_a_pool() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  tier = 1
"
    );
    assert_only(&text, "pool[0].origin[1].addr", "listed twice");
}

#[test]
fn bad_listen_addresses() {
    let text = "
[listen]
http = [\"127.0.0.1:8080\", \"localhost:8081\"]
metrics = \"127.0.0.1:8080\"
admin = \"9091\"
"
    .to_owned()
        + PORTAL_SITE
        + PORTAL_POOL;
    let errs = errors(&text);
    assert!(has(&errs, "listen.http[1]", "not an IP:port"), "{errs:#?}");
    assert!(
        has(&errs, "listen.metrics", "used by another listener"),
        "{errs:#?}"
    );
    assert!(has(&errs, "listen.admin", "not an IP:port"), "{errs:#?}");
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn bad_log_level_and_empty_access() {
    let errs = errors(&format!(
        "[log]\nlevel = \"verbose\"\naccess = \"\"\n{MINIMAL}"
    ));
    assert!(has(&errs, "log.level", "verbose"), "{errs:#?}");
    assert!(has(&errs, "log.access", "stdout"), "{errs:#?}");
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn bad_names() {
    let text = format!(
        "{LISTEN}
[[site]]
name = \"the portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"

[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  region = \"ha noi\"
"
    );
    let errs = errors(&text);
    assert!(has(&errs, "site[0].name", "may only use"), "{errs:#?}");
    assert!(
        has(&errs, "pool[0].origin[0].region", "may only use"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn missing_names() {
    let text = format!(
        "{LISTEN}
[[site]]
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"

[[pool]]
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let errs = errors(&text);
    assert!(has(&errs, "site[0].name", "is required"), "{errs:#?}");
    assert!(has(&errs, "pool[0].name", "is required"), "{errs:#?}");
    // The site's pool cannot be found either, since the pool has no name.
    assert!(has(&errs, "site[0].pool", "no pool is named"), "{errs:#?}");
}

// === Cross-references and uniqueness ===

#[test]
fn site_names_a_missing_pool() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portl\"
"
    );
    assert_only(&text, "site[0].pool", "no pool is named \"portl\"");
}

#[test]
fn site_without_pool() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
"
    );
    assert_only(&text, "site[0].pool", "is required");
}

#[test]
fn route_names_a_missing_pool() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
  [[site.route]]
  path = \"/static/\"
  [[site.route]]
  path = \"/api/\"
  pool = \"api\"
"
    );
    assert_only(&text, "site[0].route[1].pool", "no pool is named \"api\"");
}

#[test]
fn bad_route_paths() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
  [[site.route]]
  path = \"api/\"
  [[site.route]]
  path = \"/live/\"
  [[site.route]]
  path = \"/live/\"
"
    );
    let errs = errors(&text);
    assert!(
        has(&errs, "site[0].route[0].path", "must start with '/'"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "site[0].route[2].path", "routed twice"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn duplicate_site_name() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"

[[site]]
name = \"portal\"
hosts = [\"static.example.vn\"]
pool = \"portal\"
"
    );
    assert_only(&text, "site[1].name", "defined twice");
}

#[test]
fn duplicate_pool_name() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"

[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.11:8080\"
"
    );
    assert_only(&text, "pool[1].name", "defined twice");
}

#[test]
fn same_host_claimed_by_two_sites() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\", \"*.daihoi.example.vn\"]
pool = \"portal\"

[[site]]
name = \"mirror\"
hosts = [\"mirror.example.vn\", \" DAIHOI.example.VN \"]
pool = \"portal\"
"
    );
    assert_only(
        &text,
        "site[1].hosts[1]",
        "already claimed by site \"portal\"",
    );
}

#[test]
fn bad_hosts() {
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi..example.vn\", \"*.\", \"https://daihoi.example.vn/\", \"daihoi.example.vn:8080\", \"[::1]\"]
pool = \"portal\"

[[site]]
name = \"empty\"
hosts = []
pool = \"portal\"
"
    );
    let errs = errors(&text);
    // A port in a host pattern could never match: requests are matched without their port.
    for path in [
        "site[0].hosts[0]",
        "site[0].hosts[1]",
        "site[0].hosts[2]",
        "site[0].hosts[3]",
    ] {
        assert!(has(&errs, path, "is not a host name"), "{errs:#?}");
    }
    assert!(
        has(&errs, "site[1].hosts", "at least one host"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 5, "{errs:#?}");
}

#[test]
fn bad_pool_host_and_sni() {
    let text = format!(
        "{LISTEN}
[[site]]
name = \"portal\"
hosts = [\"*\"]
pool = \"portal\"
[[pool]]
name = \"portal\"
host = \"user@origin.example.vn\"
sni = \"origin.example.vn:443\"
  [[pool.origin]]
  addr = \"10.0.1.10:80\"
"
    );
    let errs = errors(&text);
    assert!(has(&errs, "pool[0].host", "not a host name"), "{errs:#?}");
    assert!(has(&errs, "pool[0].sni", "not a DNS name"), "{errs:#?}");
    assert_eq!(errs.len(), 2, "{errs:#?}");
    // A host with a port is a valid Host header.
    let ok = text
        .replace("user@origin.example.vn", "origin.example.vn:8443")
        .replace("origin.example.vn:443", "origin.example.vn");
    parse(&ok).unwrap();
}

#[test]
fn no_site_at_all() {
    let text = format!("{LISTEN}{PORTAL_POOL}");
    assert_only(&text, "site", "at least one [[site]]");
}

#[test]
fn pool_with_no_origin() {
    let text = format!("{LISTEN}{PORTAL_SITE}\n[[pool]]\nname = \"portal\"\n");
    assert_only(&text, "pool[0].origin", "at least one origin");
}

#[test]
fn tls_without_sni_or_host() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
tls = true
  [[pool.origin]]
  addr = \"10.0.1.10:443\"
"
    );
    assert_only(&text, "pool[0].sni", "tls = true needs sni");
}

// === Ranges ===

#[test]
fn out_of_range_tier_and_weight() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  tier = 256
  [[pool.origin]]
  addr = \"10.0.1.11:8080\"
  tier = -1
  weight = 0
  [[pool.origin]]
  addr = \"10.0.1.12:8080\"
  weight = 1001
"
    );
    let errs = errors(&text);
    assert!(
        has(
            &errs,
            "pool[0].origin[0].tier",
            "256 is out of range (0..=255)"
        ),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "pool[0].origin[1].tier", "-1 is out of range"),
        "{errs:#?}"
    );
    assert!(
        has(
            &errs,
            "pool[0].origin[1].weight",
            "0 is out of range (1..=1000)"
        ),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "pool[0].origin[2].weight", "1001 is out of range"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

#[test]
fn tier_and_weight_bounds_are_inclusive() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
  tier = 255
  weight = 1000
  [[pool.origin]]
  addr = \"10.0.1.11:8080\"
  tier = 0
  weight = 1
"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.pools[0].origins[0].tier, 255);
    assert_eq!(c.pools[0].origins[0].weight, 1000);
}

#[test]
fn out_of_range_threads() {
    assert_only(
        &format!("[node]\nthreads = 0\n{MINIMAL}"),
        "node.threads",
        "0 is out of range (1..=1024)",
    );
    assert_only(
        &format!("[node]\nthreads = 1025\n{MINIMAL}"),
        "node.threads",
        "1025 is out of range",
    );
    let c = parse(&format!("[node]\nthreads = 1024\n{MINIMAL}")).unwrap();
    assert_eq!(c.node.threads, 1024);
}

#[test]
fn out_of_range_pool_counts() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
max_attempts = 0
health = {{ fall = 0, rise = 101, path = \"healthz\" }}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let errs = errors(&text);
    assert!(
        has(&errs, "pool[0].max_attempts", "out of range (1..=16)"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "pool[0].health.fall", "out of range (1..=100)"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "pool[0].health.rise", "out of range (1..=100)"),
        "{errs:#?}"
    );
    assert!(
        has(&errs, "pool[0].health.path", "must start with '/'"),
        "{errs:#?}"
    );
    assert_eq!(errs.len(), 4, "{errs:#?}");
}

// === Files ===

#[test]
fn token_file_missing() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[admin]\ntoken_file = \"admin.token\"\n{MINIMAL}");
    let errs = parse_in(&text, dir.path()).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "admin.token_file");
    assert!(errs[0].message.contains("cannot read"), "{errs:#?}");
    assert!(
        errs[0]
            .message
            .contains(&dir.path().join("admin.token").display().to_string()),
        "the message should name the resolved file: {errs:#?}"
    );
}

#[test]
fn token_file_too_short() {
    let dir = tempfile::tempdir().unwrap();
    // 15 characters once trimmed: one short of the minimum.
    std::fs::write(dir.path().join("admin.token"), "  0123456789abcde \n").unwrap();
    let text = format!("[admin]\ntoken_file = \"admin.token\"\n{MINIMAL}");
    let errs = parse_in(&text, dir.path()).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "admin.token_file");
    assert!(
        errs[0].message.contains("at least 16 characters"),
        "{errs:#?}"
    );
    // The message must not echo the token itself.
    assert!(!errs[0].message.contains("0123456789abcde"), "{errs:#?}");

    std::fs::write(dir.path().join("admin.token"), "0123456789abcdef").unwrap();
    let c = parse_in(&text, dir.path()).unwrap();
    let d = ring::digest::digest(&ring::digest::SHA256, b"0123456789abcdef");
    assert_eq!(&c.admin.tokens[0].hash[..], d.as_ref());
}

#[test]
fn token_file_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("secret.token");
    std::fs::write(&token, TOKEN).unwrap();
    let text = format!("[admin]\ntoken_file = \"{}\"\n{MINIMAL}", token.display());
    // The base directory does not matter for an absolute path.
    let c = parse(&text).unwrap();
    let hash = |t: &str| {
        let d = ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
        <[u8; 32]>::try_from(d.as_ref()).unwrap()
    };
    assert_eq!(c.admin.tokens[0].hash, hash(TOKEN));
}

#[test]
fn maintenance_page_missing() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
maintenance_page = \"maintenance.html\"
"
    );
    let errs = parse_in(&text, dir.path()).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "site[0].maintenance_page");
    assert!(errs[0].message.contains("cannot read"), "{errs:#?}");
}

#[test]
fn maintenance_page_too_large() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("big.html"), vec![b'x'; (1 << 20) + 1]).unwrap();
    let text = format!(
        "{LISTEN}{PORTAL_POOL}
[[site]]
name = \"portal\"
hosts = [\"daihoi.example.vn\"]
pool = \"portal\"
maintenance_page = \"big.html\"
"
    );
    let errs = parse_in(&text, dir.path()).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "site[0].maintenance_page");
    assert!(errs[0].message.contains("larger than"), "{errs:#?}");
}

// === Listeners ===

#[test]
fn https_listener_needs_a_certificate() {
    let text = format!(
        "[listen]\nhttp = [\"0.0.0.0:80\"]\nhttps = [\"0.0.0.0:443\"]\n{PORTAL_SITE}{PORTAL_POOL}"
    );
    assert_only(&text, "listen.https", "[[tls.cert]]");
}

#[test]
fn no_listener_at_all() {
    let text = format!("{PORTAL_SITE}{PORTAL_POOL}");
    assert_only(&text, "listen.http", "at least one listener");
    let text =
        format!("[listen]\nhttp = []\nmetrics = \"127.0.0.1:9090\"\n{PORTAL_SITE}{PORTAL_POOL}");
    assert_only(&text, "listen.http", "at least one listener");
}

// === Many errors at once ===

#[test]
fn many_errors_are_all_reported_in_one_pass() {
    let text = r#"
mystery = 1

[node]
id = "edge hn 1"
threads = 0
grace_period = "soon"

[listen]
http = ["0.0.0.0:80", "0.0.0.0:80"]
admin = "localhost:9091"

[log]
level = "loud"

[[site]]
name = "portal"
hosts = ["daihoi.example.vn"]
pool = "missing"
  [[site.route]]
  path = "/api/"
  pool = "nope"
  colour = "blue"

[[site]]
name = "portal"
hosts = ["DAIHOI.example.vn"]
pool = "portal"

[[pool]]
name = "portal"
tls = true
read_timeout = "15"

  [[pool.origin]]
  addr = "10.0.1.10:8080"
  tier = 300

  [[pool.origin]]
  adrr = "10.0.1.11:8080"
  weight = 0

[[pool]]
name = "portal"
"#;
    let errs = errors(text);
    let expected = [
        ("mystery", "unknown key"),
        ("site[0].route[0].colour", "unknown key"),
        ("pool[0].origin[1].adrr", "unknown key"),
        ("node.id", "may only use"),
        ("node.threads", "out of range"),
        ("node.grace_period", "soon"),
        ("listen.http[1]", "used by another listener"),
        ("listen.admin", "not an IP:port"),
        ("log.level", "loud"),
        ("pool[0].sni", "tls = true needs sni"),
        ("pool[0].origin[0].tier", "out of range"),
        ("pool[0].origin[1].weight", "out of range"),
        ("pool[0].origin[1].addr", "is required"),
        ("pool[0].read_timeout", "needs a unit"),
        ("pool[1].name", "defined twice"),
        ("pool[1].origin", "at least one origin"),
        ("site[0].pool", "no pool is named \"missing\""),
        ("site[0].route[0].pool", "no pool is named \"nope\""),
        ("site[1].name", "defined twice"),
        ("site[1].hosts[0]", "already claimed"),
    ];
    for (path, needle) in expected {
        assert!(
            has(&errs, path, needle),
            "missing {path}: {needle} in {errs:#?}"
        );
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    // The Display form is one `path: message` line per error, as `onair check` prints it.
    let shown = ConfigErrors(errs).to_string();
    assert_eq!(shown.lines().count(), expected.len());
    assert!(shown
        .lines()
        .any(|l| l.starts_with("pool[0].origin[1].adrr: ")));
    assert!(shown.lines().any(|l| l.starts_with("site[1].hosts[0]: ")));
}

// === Overrides ===

#[test]
fn overrides_take_precedence_over_the_file() {
    let text = format!("[node]\nid = \"edge-hn-1\"\nregion = \"hn\"\n{MINIMAL}");
    let c = parse(&text).unwrap();
    assert_eq!(
        (c.node.id.as_str(), c.node.region.as_str()),
        ("edge-hn-1", "hn")
    );

    let overrides = Overrides {
        region: Some("hcm".into()),
        node_id: Some("edge-hcm-2".into()),
    };
    let c = Config::parse(&text, Path::new(NO_DIR), &overrides).unwrap();
    assert_eq!(c.node.id, "edge-hcm-2");
    assert_eq!(c.node.region, "hcm");

    // An override also fills a key the file leaves out.
    let c = Config::parse(MINIMAL, Path::new(NO_DIR), &overrides).unwrap();
    assert_eq!(c.node.id, "edge-hcm-2");
    assert_eq!(c.node.region, "hcm");
}

#[test]
fn bad_node_id_override_is_an_error_at_node_id() {
    let text = format!("[node]\nid = \"edge-hn-1\"\n{MINIMAL}");
    let overrides = Overrides {
        region: None,
        node_id: Some("edge hn/1".into()),
    };
    let errs = Config::parse(&text, Path::new(NO_DIR), &overrides)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "node.id");
    assert!(errs[0].message.contains("edge hn/1"), "{errs:#?}");
}

#[test]
fn bad_region_override_is_an_error_at_node_region() {
    let overrides = Overrides {
        region: Some("ha noi".into()),
        node_id: None,
    };
    let errs = Config::parse(MINIMAL, Path::new(NO_DIR), &overrides)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "node.region");
}

// === TOML errors ===

/// The 1-based line number a message names as `line N`, if any.
fn line_of(message: &str) -> Option<usize> {
    let rest = &message[message.find("line ")? + 5..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn toml_syntax_error_is_one_error_with_a_line_number() {
    // Line 4 is broken: an unterminated string.
    let text =
        "[node]\nid = \"edge-hn-1\"\n\nregion = \"hn\n\n[listen]\nhttp = [\"127.0.0.1:8080\"]\n";
    let e = only_error(text);
    assert_eq!(e.path, "node.region");
    assert_eq!(line_of(&e.message), Some(4), "no line 4 in {:?}", e.message);
}

#[test]
fn toml_duplicate_key_is_one_error_with_a_line_number() {
    let text = format!("[node]\nid = \"a\"\nid = \"b\"\n{MINIMAL}");
    let e = only_error(&text);
    assert_eq!(e.path, "node.id");
    assert_eq!(line_of(&e.message), Some(3), "no line 3 in {:?}", e.message);
}

#[test]
fn toml_type_error_names_its_line() {
    // A value of the wrong TOML type stops serde before validation: one error, with a line.
    let text = format!("[node]\nthreads = \"four\"\n{MINIMAL}");
    let e = only_error(&text);
    assert_eq!(e.path, "node.threads");
    assert_eq!(line_of(&e.message), Some(2), "no line 2 in {:?}", e.message);
}

#[test]
fn toml_type_error_in_nested_array_names_its_key_path() {
    let text = format!(
        "{MINIMAL}\n[[pool]]\nname = \"b\"\n  [[pool.origin]]\n  addr = \"127.0.0.1:1\"\n  [[pool.origin]]\n  tier = \"low\"\n"
    );
    let e = only_error(&text);
    assert_eq!(e.path, "pool[1].origin[1].tier", "{e}");
}

#[test]
fn origin_protection_and_passive_health() {
    let text = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
total_timeout = \"30s\"
max_inflight = 64
queue = 8
queue_timeout = \"250ms\"
retry_budget = 0.1
passive = {{ failures = 5, eject = \"2s\", max_eject = \"1m\" }}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let c = parse(&text).unwrap();
    let p = &c.pools[0];
    assert_eq!(p.total_timeout, Duration::from_secs(30));
    assert_eq!((p.max_inflight, p.queue), (64, 8));
    assert_eq!(p.queue_timeout, Duration::from_millis(250));
    assert_eq!(p.retry_budget, 0.1);
    assert_eq!(
        p.passive,
        Passive {
            failures: 5,
            eject: Duration::from_secs(2),
            max_eject: Duration::from_secs(60)
        }
    );
    let defaults = parse(MINIMAL).unwrap();
    let d = &defaults.pools[0];
    assert_eq!((d.max_inflight, d.queue, d.retry_budget), (1024, 256, 0.2));
    assert_eq!(d.passive, Passive::default());

    let bad = format!(
        "{LISTEN}{PORTAL_SITE}
[[pool]]
name = \"portal\"
connect_timeout = \"5s\"
total_timeout = \"1s\"
max_inflight = 0
retry_budget = 1.5
passive = {{ failures = 101, eject = \"0s\", max_eject = \"1s\" }}
  [[pool.origin]]
  addr = \"10.0.1.10:8080\"
"
    );
    let errs = errors(&bad);
    for (path, needle) in [
        ("pool[0].total_timeout", "at least connect_timeout"),
        ("pool[0].max_inflight", "out of range"),
        ("pool[0].retry_budget", "out of range"),
        ("pool[0].passive.failures", "out of range (0..=100)"),
        ("pool[0].passive.eject", "more than 0"),
    ] {
        assert!(has(&errs, path, needle), "{path}: {errs:#?}");
    }
}

#[test]
fn protect_rates_and_trusted_proxies() {
    let text = format!(
        "{MINIMAL}\n[protect]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nrate = \"600/m\"\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.protect.trusted_proxies.len(), 2);
    let rate = c.protect.rate.unwrap();
    assert_eq!(
        (rate.per_second, rate.burst),
        (10.0, 10),
        "burst defaults to a second's worth"
    );
    assert!(
        parse(MINIMAL).unwrap().protect.rate.is_none(),
        "no limit unless asked"
    );
    let bad =
        format!("{MINIMAL}\n[protect]\ntrusted_proxies = [\"10.0.0.0/33\"]\nrate = \"fast\"\n");
    let errs = errors(&bad);
    assert!(
        has(&errs, "protect.trusted_proxies[0]", "prefix length"),
        "{errs:#?}"
    );
    assert!(has(&errs, "protect.rate", "not a rate"), "{errs:#?}");
    // A shield's edges: believed for X-Forwarded-For, and exempt from per-client limits.
    let c = parse(&format!(
        "{MINIMAL}\n[protect]\ntiers = [\"10.1.0.0/16\"]\n"
    ))
    .unwrap();
    assert!(c.protect.forwards_for_others("10.1.2.3".parse().unwrap()));
    assert!(!c.protect.forwards_for_others("10.2.0.1".parse().unwrap()));
    let errs = errors(&format!("{MINIMAL}\n[protect]\ntiers = [\"edges\"]\n"));
    assert!(has(&errs, "protect.tiers[0]", ""), "{errs:#?}");
    let errs = errors(&format!("{MINIMAL}\n[protect]\nburst = 5\n"));
    assert!(
        has(&errs, "protect.burst", "needs protect.rate"),
        "{errs:#?}"
    );
    let errs = errors(&format!(
        "{LISTEN}{PORTAL_POOL}\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\npool = \"portal\"\n  [[site.route]]\n  path = \"/api/\"\n  rate = \"20/s\"\n  burst = 0\n"
    ));
    assert!(
        has(&errs, "site[0].route[0].burst", "out of range"),
        "{errs:#?}"
    );
}

#[test]
fn protect_connection_limits_and_attack_mode() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.protect.max_connections_per_ip, 256);
    assert_eq!(c.protect.header_timeout, Duration::from_secs(10));
    assert_eq!(c.protect.attack.mode, AttackMode::Off);
    assert!(c.protect.attack.key.is_none());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), "too short").unwrap();
    std::fs::write(dir.path().join("good.key"), format!("{}\n", "k".repeat(64))).unwrap();
    let text = |extra: &str| {
        format!(
            "{MINIMAL}\n[protect]\nmax_connections_per_ip = 0\nheader_timeout = \"5s\"\n\
             body_timeout = \"30s\"\nmin_upload_rate = \"1KiB\"\n[protect.attack]\n{extra}"
        )
    };
    let c = parse_in(
        &text("mode = \"auto\"\ntrigger_rps = 900\ncooldown = \"2m\"\nkey_file = \"good.key\"\n"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(c.protect.max_connections_per_ip, 0);
    assert_eq!(c.protect.min_upload_rate, 1024);
    assert_eq!(c.protect.attack.mode, AttackMode::Auto);
    assert_eq!(c.protect.attack.trigger_rps, 900);
    assert_eq!(c.protect.attack.key.unwrap().0.len(), 64, "trimmed");
    let errs = match parse_in(
        &text("mode = \"panic\"\nchallenge = \"captcha\"\ndifficulty = 40\nkey_file = \"short.key\"\n"),
        dir.path(),
    ) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0,
    };
    for (path, needle) in [
        ("protect.attack.mode", "must be"),
        ("protect.attack.challenge", "must be"),
        ("protect.attack.difficulty", "out of range"),
        ("protect.attack.key_file", "at least 32"),
    ] {
        assert!(has(&errs, path, needle), "{path}: {errs:#?}");
    }
    let errs = errors(&MINIMAL.replace(
        "[listen]\n",
        "[listen]\nproxy_protocol = [\"127.0.0.1:8081\"]\n",
    ));
    assert!(
        has(&errs, "listen.proxy_protocol", "trusted_proxies"),
        "{errs:#?}"
    );
    let errs = errors(&format!("{MINIMAL}\n[protect]\nheader_timeout = \"0s\"\n"));
    assert!(has(&errs, "protect.header_timeout", "between"), "{errs:#?}");
    let errs = errors(&format!(
        "{MINIMAL}\n[protect.attack]\nkey_file = \"/nonexistent/k\"\n"
    ));
    assert!(has(&errs, "protect.attack.key_file", ""), "{errs:#?}");
}

#[test]
fn tls_certificates_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["portal.test".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["other.test".into()]).unwrap();
    let mut old = rcgen::CertificateParams::new(vec!["old.test".to_owned()]).unwrap();
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old_key = rcgen::KeyPair::generate().unwrap();
    let old_cert = old.self_signed(&old_key).unwrap();
    for (name, text) in [
        ("a.pem", a.cert.pem()),
        ("a.key", a.key_pair.serialize_pem()),
        ("b.key", b.key_pair.serialize_pem()),
        ("old.pem", old_cert.pem()),
        ("old.key", old_key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let with = |https: bool, certs: &str| {
        let listen = if https {
            "[listen]\nhttps = [\"127.0.0.1:8443\"]\n"
        } else {
            "[listen]\n"
        };
        MINIMAL.replace("[listen]\n", listen) + "\n[tls]\nhsts = \"max-age=600\"\n" + certs
    };
    let good = "[[tls.cert]]\ncert = \"a.pem\"\nkey = \"a.key\"\n";
    let c = parse_in(&with(true, good), dir.path()).unwrap();
    assert_eq!(c.tls.certs[0].names, ["portal.test"]);
    assert_eq!(c.tls.hsts.as_deref(), Some("max-age=600"));
    assert!(!c.tls.redirect_http, "off unless asked");
    let errs = |text: String| match parse_in(&text, dir.path()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.0,
    };
    let e = errs(with(true, ""));
    assert!(has(&e, "listen.https", "tls.cert"), "{e:#?}");
    let e = errs(with(
        true,
        "[[tls.cert]]\ncert = \"a.pem\"\nkey = \"b.key\"\n",
    ));
    assert!(
        has(
            &e,
            "tls.cert[0].cert",
            "a.pem: the private key does not match"
        ),
        "{e:#?}"
    );
    let e = errs(with(
        true,
        "[[tls.cert]]\ncert = \"old.pem\"\nkey = \"old.key\"\n",
    ));
    assert!(
        has(&e, "tls.cert[0].cert", "old.pem: the certificate expired"),
        "{e:#?}"
    );
    let e = errs(with(
        true,
        "[[tls.cert]]\ncert = \"missing.pem\"\nkey = \"a.key\"\n",
    ));
    assert!(has(&e, "tls.cert[0].cert", "missing.pem"), "{e:#?}");
    let e = errs(with(false, "[[tls.cert]]\ncert = \"a.pem\"\n").replace("max-age=600", "1 year"));
    assert!(has(&e, "tls.cert[0]", "needs both"), "{e:#?}");
    assert!(has(&e, "tls.hsts", "max-age"), "{e:#?}");
}

#[test]
fn fleet_bus_and_operator_keys() {
    use crate::fleet::keys::tests::{PRIVATE_PEM, PUBLIC_PEM};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("operators.pub"), PUBLIC_PEM).unwrap();
    std::fs::write(dir.path().join("operator.key"), PRIVATE_PEM).unwrap();
    std::fs::write(dir.path().join("nats.token"), "s3cret-token\n").unwrap();
    let text = format!(
        "{MINIMAL}\n[fleet]\nservers = [\"nats://10.0.0.5:4222\"]\ntoken_file = \"nats.token\"\n\
         verify_key = [\"operators.pub\"]\nsign_key = \"operator.key\"\n"
    );
    let c = parse_in(&text, dir.path()).unwrap();
    let fleet = c.fleet.unwrap();
    assert_eq!(fleet.stream, "ONAIR");
    assert_eq!(fleet.subject, "onair");
    assert_eq!(fleet.auth, FleetAuth::Token("s3cret-token".into()));
    assert_eq!(fleet.verify_keys.len(), 1);
    assert!(fleet.sign_key.is_some());
    // Kept at least as long as a copy may be served stale (7 days by default).
    assert_eq!(fleet.retention, Duration::from_secs(7 * 86_400));
    assert!(
        !format!("{fleet:?}").contains("s3cret"),
        "secrets stay out of logs"
    );
    // Without [fleet] a node runs alone.
    assert!(parse(MINIMAL).unwrap().fleet.is_none());

    // An NKey user seed; not an account's or operator's seed, not junk; one credential only.
    let user = nkeys::KeyPair::new_user();
    std::fs::write(dir.path().join("node.nk"), user.seed().unwrap()).unwrap();
    let account = nkeys::KeyPair::new_account();
    std::fs::write(dir.path().join("account.nk"), account.seed().unwrap()).unwrap();
    std::fs::write(dir.path().join("junk.nk"), "SUnot-a-seed").unwrap();
    let with = |keys: &str| {
        format!(
            "{MINIMAL}\n[fleet]\nservers = [\"nats://10.0.0.5:4222\"]\n{keys}\n\
             verify_key = [\"operators.pub\"]\n"
        )
    };
    let c = parse_in(&with("nkey_file = \"node.nk\""), dir.path()).unwrap();
    assert!(matches!(c.fleet.unwrap().auth, FleetAuth::NKey(seed) if seed.starts_with("SU")));
    for (keys, path) in [
        ("nkey_file = \"account.nk\"", "fleet.nkey_file"),
        ("nkey_file = \"junk.nk\"", "fleet.nkey_file"),
        (
            "nkey_file = \"node.nk\"\ntoken_file = \"nats.token\"",
            "fleet.nkey_file",
        ),
    ] {
        let errs = Config::parse(&with(keys), dir.path(), &Overrides::default()).unwrap_err();
        assert_eq!(errs.0[0].path, path, "{keys}: {errs:#?}");
    }

    // Everything wrong at once, each with its path.
    std::fs::write(dir.path().join("other.pub"), PRIVATE_PEM).unwrap();
    let bad = format!(
        "{MINIMAL}\n[fleet]\nservers = [\"10.0.0.5:4222\"]\nverify_key = [\"other.pub\", \"missing.pub\"]\n\
         sign_key = \"operators.pub\"\nmax_skew = \"2d\"\nretention = \"1h\"\nstream = \"ON AIR\"\n"
    );
    let errs = Config::parse(&bad, dir.path(), &Overrides::default()).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    for path in [
        "fleet.servers[0]",
        "fleet.verify_key[0]",
        "fleet.verify_key[1]",
        "fleet.verify_key",
        "fleet.sign_key",
        "fleet.max_skew",
        "fleet.retention",
        "fleet.stream",
    ] {
        assert!(paths.contains(&path), "{path} missing in {errs:#?}");
    }
    // A signing key whose public half no node accepts.
    let other =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    use base64::Engine;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(other.as_ref())
    );
    std::fs::write(dir.path().join("stranger.key"), pem).unwrap();
    let text = format!(
        "{MINIMAL}\n[fleet]\nservers = [\"nats://10.0.0.5:4222\"]\nverify_key = [\"operators.pub\"]\n\
         sign_key = \"stranger.key\"\n"
    );
    let errs = Config::parse(&text, dir.path(), &Overrides::default()).unwrap_err();
    assert!(errs
        .0
        .iter()
        .any(|e| e.path == "fleet.sign_key" && e.message.contains("not among fleet.verify_key")));
}

#[test]
fn a_sites_embargo_answer_is_a_4xx() {
    let site = |status: &str| {
        MINIMAL.replacen(
            "pool = \"portal\"\n",
            &format!("pool = \"portal\"\nembargo_status = {status}\n"),
            1,
        )
    };
    assert_eq!(parse(&site("451")).unwrap().sites[0].embargo_status, 451);
    let errs = parse(&site("200")).unwrap_err();
    assert_eq!(errs.0[0].path, "site[0].embargo_status", "{errs:#?}");
}

#[test]
fn a_sites_integrity_reads_its_keys_and_refuses_what_it_cannot_do() {
    use crate::keys::tests::{PRIVATE_PEM, PUBLIC_PEM};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("newsroom.pub"), PUBLIC_PEM).unwrap();
    std::fs::write(dir.path().join("private.key"), PRIVATE_PEM).unwrap();
    let site = |table: &str| {
        MINIMAL.replacen(
            "pool = \"portal\"\n",
            &format!("pool = \"portal\"\n[site.integrity]\n{table}\n"),
            1,
        )
    };
    let good = "keys = [{ id = \"newsroom-2027\", public_key = \"newsroom.pub\" }]";
    let config = parse_in(&site(good), dir.path()).unwrap();
    let integrity = config.sites[0].integrity.as_ref().unwrap();
    assert_eq!(integrity.mode, IntegrityMode::Report);
    assert_eq!(integrity.keys[0].0, "newsroom-2027");
    assert_eq!(integrity.max_buffer, 8 << 20);
    assert!(parse_in(MINIMAL, dir.path()).unwrap().sites[0]
        .integrity
        .is_none());
    for (table, path, says) in [
        (
            format!("mode = \"enforce\"\n{good}"),
            "site[0].integrity.mode",
            "not in this version",
        ),
        (
            format!("mode = \"strict\"\n{good}"),
            "site[0].integrity.mode",
            "not \"enforce\" or \"report\"",
        ),
        (
            "keys = []".to_owned(),
            "site[0].integrity.keys",
            "at least one",
        ),
        (
            "keys = [{ id = \"k\", public_key = \"private.key\" }]".to_owned(),
            "site[0].integrity.keys[0].public_key",
            "PUBLIC KEY",
        ),
        (
            "keys = [{ id = \"k\", public_key = \"missing.pub\" }]".to_owned(),
            "site[0].integrity.keys[0].public_key",
            "cannot read",
        ),
        (
            "keys = [{ public_key = \"newsroom.pub\" }]".to_owned(),
            "site[0].integrity.keys[0].id",
            "required",
        ),
        (
            format!("{good}\nmax_buffer = \"0\""),
            "site[0].integrity.max_buffer",
            "above 0",
        ),
    ] {
        let errs = parse_in(&site(&table), dir.path()).unwrap_err();
        assert!(
            errs.0
                .iter()
                .any(|e| e.path == path && e.message.contains(says)),
            "{table}: {errs:#?}"
        );
    }
    let twice = "keys = [{ id = \"k\", public_key = \"newsroom.pub\" }, \
                 { id = \"k\", public_key = \"newsroom.pub\" }]";
    let errs = parse_in(&site(twice), dir.path()).unwrap_err();
    assert_eq!(errs.0[0].path, "site[0].integrity.keys[1].id", "{errs:#?}");
}

#[test]
fn admin_tokens_have_names_scopes_and_secrets_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    for (file, secret) in [
        ("admin.token", "admin-token-0123456789"),
        ("newsdesk.token", "newsdesk-token-0123456789"),
        ("short.token", "short"),
    ] {
        std::fs::write(dir.path().join(file), secret).unwrap();
    }
    let with = |admin: &str| format!("[admin]\n{admin}\n{MINIMAL}");
    let config = parse_in(
        &with(
            "token_file = \"admin.token\"\ntokens = [{ name = \"newsdesk\", \
             file = \"newsdesk.token\", scopes = [\"read\", \"purge\"] }]",
        ),
        dir.path(),
    )
    .unwrap();
    let tokens = &config.admin.tokens;
    assert_eq!(tokens.len(), 2);
    assert_eq!(
        (tokens[0].name.as_str(), tokens[0].scopes),
        ("admin", Scopes::ALL)
    );
    assert!(tokens[1].scopes.allows(AdminScope::Purge));
    assert!(!tokens[1].scopes.allows(AdminScope::Operate));
    // No secret in the debug output, hashed or not.
    let shown = format!("{:?}", config.admin);
    assert!(
        shown.contains("newsdesk") && !shown.contains("0123456789"),
        "{shown}"
    );
    for (admin, path, says) in [
        (
            "tokens = [{ name = \"n\", file = \"newsdesk.token\", scopes = [\"root\"] }]",
            "admin.tokens[0].scopes",
            "not \"read\"",
        ),
        (
            "tokens = [{ name = \"n\", file = \"newsdesk.token\" }]",
            "admin.tokens[0].scopes",
            "at least one",
        ),
        (
            "tokens = [{ name = \"n\", file = \"short.token\", scopes = [\"read\"] }]",
            "admin.tokens[0].file",
            "at least 16",
        ),
        (
            "token_file = \"newsdesk.token\"\ntokens = [{ name = \"n\", \
             file = \"newsdesk.token\", scopes = [\"read\"] }]",
            "admin.tokens[0]",
            "same secret",
        ),
        (
            "tokens = [{ name = \"admin\", file = \"newsdesk.token\", scopes = [\"read\"] }, \
             { name = \"admin\", file = \"admin.token\", scopes = [\"read\"] }]",
            "admin.tokens[1]",
            "used twice",
        ),
    ] {
        let errs = parse_in(&with(admin), dir.path()).unwrap_err();
        assert!(
            errs.0
                .iter()
                .any(|e| e.path == path && e.message.contains(says)),
            "{admin}: {errs:#?}"
        );
    }
}
