//! A real NATS server with JetStream for tests: Debian's `nats-server` on a random loopback
//! port (it writes the port it took to a ports file), its store in a temporary directory.
//! Killed when dropped; `kill` and `restart` play a bus outage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub url: String,
    port: u16,
    /// Cluster flags, for a restart.
    cluster: Vec<String>,
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
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = spawn(&dir, -1, &[]).await;
        Nats {
            child: Some(child),
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            port,
            cluster: Vec::new(),
        }
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
                "--server_name".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "onair-test".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                route_list.clone(),
            ];
            let (child, port) = spawn(&dir, i32::from(port), &cluster).await;
            servers.push(Nats {
                child: Some(child),
                url: format!("nats://127.0.0.1:{port}"),
                dir,
                port,
                cluster,
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
        let (child, _) = spawn(&self.dir, i32::from(self.port), &self.cluster).await;
        self.child = Some(child);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts nats-server on `port` (-1: any) and waits until it accepts connections.
async fn spawn(dir: &tempfile::TempDir, port: i32, extra: &[String]) -> (Child, u16) {
    let ports_dir = dir.path().join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).unwrap();
    let mut child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.path().join("store"))
        .arg("--ports_file_dir")
        .arg(&ports_dir)
        .args(extra)
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
