//! `onair demo`: a self-contained showcase. Two sample origins (primary on tier 0, backup on
//! tier 1) serve a small bilingual news site; an edge runs in front of them on
//! 127.0.0.1:8080 with metrics on :9090 and admin on :9091; a control endpoint on :9092 stops
//! and restarts the origins so a new user can watch failover happen. Ctrl-C stops it all.

pub mod control;
pub mod origin;
pub mod site;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::{Config, Overrides};
use crate::server::{self, StartError};

/// The config the demo runs with, placeholders filled in at start.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// Where the demo's origin controls listen.
const CONTROL_ADDR: &str = "127.0.0.1:9092";

/// Starts the sample origins and the edge; returns only on a start-up error.
pub fn run() -> Result<(), StartError> {
    let dir = std::env::temp_dir().join(format!("onair-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::Io(format!("cannot create {}: {e}", dir.display())))?;
    let token = demo_token();
    std::fs::write(dir.join("admin.token"), &token)
        .map_err(|e| StartError::Io(format!("cannot write the demo token: {e}")))?;

    let (primary, backup) = start_origins()?;
    let text = DEMO_CONFIG
        .replace("{{STATE_DIR}}", &dir.to_string_lossy())
        .replace("{{PRIMARY}}", &primary.to_string())
        .replace("{{BACKUP}}", &backup.to_string());
    let config_path = dir.join("onair.toml");
    std::fs::write(&config_path, &text)
        .map_err(|e| StartError::Io(format!("cannot write {}: {e}", config_path.display())))?;
    let config = Config::load(&config_path, &Overrides::default())?;
    print_tour(&dir, &token, primary, backup);
    let served = server::serve(config, Some(config_path), Overrides::default(), false);
    // The demo's scratch directory (config, token, cache, logs) goes with it.
    let _ = std::fs::remove_dir_all(&dir);
    served
}

/// `onair sample-origin`: one sample origin in the foreground until Ctrl-C or SIGTERM, for
/// setups that run origins as their own processes (the local fleet of scripts/fleet.sh).
pub fn serve_sample_origin(listen: SocketAddr, name: String) -> Result<(), StartError> {
    crate::logging::init("info");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Io(format!("runtime: {e}")))?;
    // The sample origin names itself with a static string; one per process, so leaking is fine.
    let name: &'static str = Box::leak(name.into_boxed_str());
    rt.block_on(async move {
        let origin = origin::SampleOrigin::start(name, listen)
            .await
            .map_err(|e| StartError::Io(format!("cannot listen on {listen}: {e}")))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| StartError::Io(format!("signal: {e}")))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        origin.stop().await;
        Ok(())
    })
}

/// Runs both origins and the control endpoint on their own runtime thread; returns the
/// origins' addresses once they listen.
fn start_origins() -> Result<(SocketAddr, SocketAddr), StartError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-origins".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("demo runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let any: SocketAddr = ([127, 0, 0, 1], 0).into();
                let started = async {
                    let primary = origin::SampleOrigin::start("primary", any).await?;
                    let backup = origin::SampleOrigin::start("backup", any).await?;
                    let control = tokio::net::TcpListener::bind(CONTROL_ADDR).await?;
                    Ok::<_, std::io::Error>((primary, backup, control))
                };
                match started.await {
                    Ok((primary, backup, control)) => {
                        let _ = tx.send(Ok((primary.addr(), backup.addr())));
                        control::serve_control(control, primary, backup).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("demo origins: {e}")));
                    }
                }
            });
        })
        .map_err(|e| StartError::Io(format!("demo thread: {e}")))?;
    match rx.recv() {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(StartError::Io(e)),
        Err(_) => Err(StartError::Io("demo origins did not start".into())),
    }
}

/// A random token for this demo run, so even a demo admin API is not open to anyone.
fn demo_token() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rng.gen_range(0..32)]))
        .collect()
}

fn print_tour(dir: &Path, token: &str, primary: SocketAddr, backup: SocketAddr) {
    let log: PathBuf = dir.join("access.log");
    println!(
        r#"
onair demo — an edge on http://127.0.0.1:8080 in front of two sample origins
  primary (tier 0): {primary}    backup (tier 1): {backup}

Try, in another terminal:
  1. The site through the edge (note Via and X-Request-Id; X-Origin says who answered).
     Ask twice: Cache-Status goes from "fwd=uri-miss; stored" to "hit; ttl=...":
       curl -i http://127.0.0.1:8080/
       curl -i http://127.0.0.1:8080/news/ket-qua-bau-cu
  2. Purge the article by its tag (its origin sends "Surrogate-Key: news article-ket-qua-bau-cu");
     the next request is a miss again, then a hit:
       curl -X POST -H 'Authorization: Bearer {token}' \
            -d '{{"tags": ["article-ket-qua-bau-cu"]}}' http://127.0.0.1:9091/purge
       curl -sI http://127.0.0.1:8080/news/ket-qua-bau-cu | grep -i cache-status
  3. Routing: /api/ goes to its own pool:
       curl -i http://127.0.0.1:8080/api/live
  4. Kill the primary and watch the backup answer, with no failed request:
       curl -X POST http://127.0.0.1:9092/primary/stop
       curl -sI http://127.0.0.1:8080/ | grep -i x-origin
     Stop both: cached pages stay up (Cache-Status "detail=stale-if-error" once they expire),
     and a page never cached gets the maintenance page (503 + Retry-After):
       curl -X POST http://127.0.0.1:9092/backup/stop
       curl -i http://127.0.0.1:8080/news/ket-qua-bau-cu
       curl -i http://127.0.0.1:8080/news/khong-co
     Bring them back (the primary takes over again after 2 good health checks):
       curl -X POST http://127.0.0.1:9092/primary/start
       curl -X POST http://127.0.0.1:9092/backup/start
  5. Under attack: switch attack mode on. Cached pages are still served to everyone, but a
     request that would reach an origin gets the challenge page (403) instead; a browser
     solves it in well under a second and comes back with a clearance cookie:
       curl -X POST -H 'Authorization: Bearer {token}' \
            -d '{{"mode": "on"}}' http://127.0.0.1:9091/attack-mode
       curl -s -H 'Accept: text/html' http://127.0.0.1:8080/news/chua-tung-xem | head -5
       open http://127.0.0.1:8080/news/chua-tung-xem in a browser, then switch it off again:
       curl -X POST -H 'Authorization: Bearer {token}' \
            -d '{{"mode": "off"}}' http://127.0.0.1:9091/attack-mode
  6. What the edge sees:
       curl -s http://127.0.0.1:9090/metrics | grep ^onair_
       curl -s -H 'Authorization: Bearer {token}' http://127.0.0.1:9091/status
       tail -f {log}
  7. Edit {dir}/onair.toml and reload without a restart:
       curl -X POST -H 'Authorization: Bearer {token}' http://127.0.0.1:9091/reload

Ctrl-C stops everything.
"#,
        log = log.display(),
        dir = dir.display(),
    );
}
