//! A real NATS server with JetStream for tests: Debian's `nats-server` on a random loopback
//! port (it writes the port it took to a ports file), its store in a temporary directory.
//! Killed when dropped; `kill` and `restart` play a bus outage.

use std::path::{Path, PathBuf};

use base64::Engine;
use onair::config::Fleet;
use onair::fleet::keys::SignKey;
use onair::fleet::op::{Action, Operation, Scope};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

pub struct Nats {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub url: String,
    port: u16,
    /// Cluster flags, for a restart.
    cluster: Vec<String>,
    /// Environment (the variables a config file refers to), for a restart.
    env: Vec<(String, String)>,
}

pub fn binary() -> PathBuf {
    for candidate in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    "nats-server".into()
}

impl Nats {
    pub async fn start() -> Nats {
        Nats::start_with(Vec::new()).await
    }

    /// A server with more command-line flags (cluster ones, for a restart to keep them).
    pub async fn start_with(extra: Vec<String>) -> Nats {
        Nats::start_with_env(extra, Vec::new()).await
    }

    /// [`Nats::start_with`] with environment variables (a config file's `$NAME`s).
    pub async fn start_with_env(extra: Vec<String>, env: Vec<(String, String)>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut extra = extra;
        extra.push("-js".into());
        let (child, port) = spawn(&dir, -1, &extra, &env).await;
        Nats {
            child: Some(child),
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            port,
            cluster: extra,
            env,
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `n` servers routed into one JetStream cluster (streams may keep `n` replicas).
    pub async fn cluster(n: usize) -> Vec<Nats> {
        // Distinct ports: every socket held until all are chosen.
        let held: Vec<std::net::TcpListener> = (0..2 * n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(held);
        let (routes, clients) = ports.split_at(n);
        let route_list = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let port = clients[i];
            let cluster = vec![
                "-js".to_owned(),
                "--server_name".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "onair-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                route_list.clone(),
            ];
            let (child, port) = spawn(&dir, i32::from(port), &cluster, &[]).await;
            servers.push(Nats {
                child: Some(child),
                url: format!("nats://127.0.0.1:{port}"),
                dir,
                port,
                cluster,
                env: Vec::new(),
            });
        }
        servers
    }

    /// Stops the server (SIGKILL): the bus is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        let (child, _) = spawn(&self.dir, i32::from(self.port), &self.cluster, &self.env).await;
        self.child = Some(child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server on `port` (-1: any) and waits until it accepts connections.
async fn spawn(
    dir: &tempfile::TempDir,
    port: i32,
    extra: &[String],
    env: &[(String, String)],
) -> (Child, u16) {
    let ports_dir = dir.path().join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).unwrap();
    let mut child = Command::new(binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.path().join("store"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .args(extra)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("nats.log")).unwrap())
        .spawn()
        .expect("nats-server (scripts/setup.sh installs it)");
    let pid = child.id();
    let file = ports_dir.join(format!("nats-server_{pid}.ports"));
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let port = json["nats"][0]
                .as_str()
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(port) = port {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return (child, port);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "nats-server did not start: {}",
        dir.path().join("nats.log").display()
    );
}

/// An operator's key pair as PEM files in `dir`: (private, public).
pub fn operator_keys(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let private = dir.join(format!("{name}.key"));
    std::fs::write(
        &private,
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64.encode(pkcs8.as_ref())
        ),
    )
    .unwrap();
    // SPKI: the Ed25519 algorithm identifier, then the 32-byte key (RFC 8410).
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .iter()
        .for_each(|b| spki.push(*b));
    let public = dir.join(format!("{name}.pub"));
    std::fs::write(
        &public,
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64.encode(&spki)
        ),
    )
    .unwrap();
    (private, public)
}

/// An onair node `id` of `region` on the bus at `urls`, trusting the operators' key `public`,
/// in front of the origin at `origin`, with more `[fleet]` keys; `shape` adjusts the setup
/// (an address, a disk cache).
pub async fn fleet_node(
    id: &str,
    region: &str,
    urls: &[&str],
    public: &Path,
    origin: std::net::SocketAddr,
    fleet_extra: &str,
    shape: impl FnOnce(super::Setup) -> super::Setup,
) -> super::Onair {
    let servers = urls
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut setup = super::Setup::new(format!(
        "{}\n[fleet]\nservers = [{servers}]\nverify_key = [\"{}\"]\n{fleet_extra}\n",
        super::one_site(origin, "", ""),
        public.display()
    ));
    setup.node_extra = format!("id = \"{id}\"\nregion = \"{region}\"\n");
    super::Onair::start(shape(setup)).await
}

/// An operator's connection to the bus at `url`, signing with the private key `key`: fleet
/// operations published as `onair fleet` does, over one connection (for bursts).
pub struct Operator {
    js: async_nats::jetstream::Context,
    fleet: Fleet,
    key: SignKey,
}

impl Operator {
    pub async fn connect(url: &str, key: &Path) -> Operator {
        let fleet = Fleet::publisher(vec![url.to_owned()]);
        let client = onair::fleet::bus::connect(&fleet, "bench-operator")
            .await
            .unwrap();
        Operator {
            js: async_nats::jetstream::new(client),
            fleet,
            key: SignKey::from_pem(&std::fs::read(key).unwrap()).unwrap(),
        }
    }

    /// Publishes a fleet purge of one URL; its id and when the publish call returned.
    pub async fn purge(&self, url: &str) -> Result<(String, SystemTime), String> {
        let op = Operation::new(
            Scope::Fleet,
            Action::Purge {
                urls: vec![url.to_owned()],
                prefix: None,
                tags: Vec::new(),
                soft: false,
            },
        );
        onair::fleet::bus::publish(&self.js, &self.fleet, op.sign(&self.key)).await?;
        Ok((op.id, SystemTime::now()))
    }

    /// The region whose server leads the operation stream (where the purges are stored).
    pub async fn stream_leader(&self) -> String {
        let mut stream = self.js.get_stream(Fleet::DEFAULT_STREAM).await.unwrap();
        let info = stream.info().await.unwrap();
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .unwrap_or_default()
            .trim_start_matches("nats-")
            .to_owned()
    }
}

/// `onair fleet ARGS` against the bus at `url`; its JSON answer.
pub fn fleet_cli(url: &str, key: &Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(super::onair_bin())
        .arg("fleet")
        .args(args)
        .arg("--servers")
        .arg(url)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onair fleet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A [`fleet_node`] on the bus at `url` (no more `[fleet]` keys), once it is connected.
pub async fn connected_node(
    id: &str,
    region: &str,
    url: &str,
    public: &Path,
    origin: std::net::SocketAddr,
) -> super::Onair {
    let n = fleet_node(id, region, &[url], public, origin, "", |s| s).await;
    assert!(
        n.metric_becomes("onair_fleet_connected", |v| v == 1.0)
            .await,
        "{}",
        n.stderr()
    );
    n
}
