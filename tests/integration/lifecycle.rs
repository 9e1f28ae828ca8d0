//! Process lifecycle: SIGTERM drains within `node.grace_period`; `-u` + SIGQUIT hands the
//! listeners to a new process without a failed request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn site(origin: &Origin) -> Setup {
    Setup::new(one_site(origin.addr, "", ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_within_grace() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        delay: Duration::from_millis(500),
        ..Behaviour::default()
    });
    let mut onair = Onair::start(site(&origin)).await;
    let http = onair.http;
    let in_flight = tokio::spawn(async move { get(http, "a", "/").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let start = Instant::now();
    onair.signal("TERM");
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the request in flight was cut off");
    // grace_period is 1s in the test config; Pingora's 300 s default must not apply.
    let exited = tokio::task::block_in_place(|| onair.wait_exit(Duration::from_secs(8)));
    assert!(exited, "still running {:?} after SIGTERM", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_loses_no_request() {
    let origin = Origin::start("o").await;
    let mut old = Onair::start(site(&origin)).await;
    let http = old.http;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                // As a browser would: an idempotent request whose connection closed before any
                // answer byte is sent once more (see get_retrying_unanswered).
                match get_retrying_unanswered(http, "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let new = hand_over(&mut old).await;
    let before = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();

    let served_after = ok.load(Ordering::SeqCst) - before;
    drop(new);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed across the hand-over:\n{}",
        old.stderr()
    );
    assert!(
        served_after > 10,
        "the new process served only {served_after} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_shares_the_disk_cache() {
    // During a graceful upgrade the old and the new process run over one cache directory: both
    // fill it (even the same objects at once) and read what the other wrote. No reader may get
    // a wrong byte, and afterwards every file must be whole.
    const SIZE: usize = 150_000;
    let origin = Origin::start("o").await;
    origin.set(
        Behaviour {
            headers: vec![("Cache-Control".into(), "max-age=600".into())],
            ..Behaviour::default()
        }
        .with_pattern(SIZE),
    );
    let disk = tempfile::tempdir().unwrap();
    let mut setup = site(&origin);
    setup.body.push_str(&format!(
        "\n[cache]\nmemory = \"1MiB\"\ndisk_path = \"{}\"\n",
        disk.path().display()
    ));
    let mut old = Onair::start(setup).await;
    let http = old.http;
    for i in 0..20 {
        let path = format!("/warm/{i}");
        assert_eq!(get(http, "a", &path).await.unwrap().body.len(), SIZE);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let wrong = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (stop, wrong, failed) = (stop.clone(), wrong.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // Warm pages (the old process's files) and new ones filled during the overlap,
                // several clients on the same new object.
                let path = if n % 2 == 0 {
                    format!("/warm/{}", (n / 2 + c) % 20)
                } else {
                    format!("/new/{}", n / 4)
                };
                n += 1;
                match get_retrying_unanswered(http, &path).await {
                    Ok(r) if r.status == 200 => {
                        if r.body != pattern_body(&path, SIZE) {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    other => failed.lock().unwrap().push(format!(
                        "{path}: {:?}",
                        other.map(|r| (r.status, r.header("cache-status").map(str::to_owned)))
                    )),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = hand_over(&mut old).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0, "a reader got wrong bytes");
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "requests failed: {failed:?}\n{}",
        old.stderr()
    );
    // The new process answers the old one's pages from disk.
    let hits = origin.hits();
    for i in 0..20 {
        let r = get(http, "a", &format!("/warm/{i}")).await.unwrap();
        assert!(r.header("cache-status").unwrap().contains("; hit"));
    }
    assert_eq!(origin.hits(), hits);
    let new_pid = new.id().to_string();
    drop(new);

    // A third process over the directory, with the origin gone: every file either process
    // wrote is whole, and no temp file is left behind.
    origin.kill();
    let mut third = Reaped(spawn(&old.config_path, &[]));
    assert!(wait_ready(&mut third.0, old.admin, http, Duration::from_secs(20)).await);
    let names: Vec<String> = std::fs::read_dir(disk.path().join("tmp"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // A fill the killed process had in flight may leave one; it belongs to a dead pid.
    assert!(
        names
            .iter()
            .all(|n| n.split('.').nth(1) == Some(new_pid.as_str())),
        "temp files left by the old process: {names:?}"
    );
    let mut served = 0;
    for path in (0..20)
        .map(|i| format!("/warm/{i}"))
        .chain((0..40).map(|i| format!("/new/{i}")))
    {
        let r = get(http, "a", &path).await.unwrap();
        if r.status == 200 {
            assert_eq!(r.body, pattern_body(&path, SIZE), "{path}");
            served += 1;
        }
    }
    assert!(served >= 20, "only {served} pages came back from disk");
}

/// During a hand-over the old process still finishes fills while the new one takes the
/// purges. A fill the old process publishes before a purge is indexed by the new one and
/// purged with the rest; one it publishes after is refused. Neither comes back from disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_during_an_upgrade_reach_the_old_process_fills() {
    let origin = Origin::start("o").await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let tagged = |body: &'static str, gate: Option<Arc<tokio::sync::Semaphore>>| Behaviour {
        headers: vec![
            ("Cache-Control".into(), "max-age=600".into()),
            ("Cache-Tag".into(), "election".into()),
        ],
        body: bytes::Bytes::from_static(body.as_bytes()),
        gate,
        ..Behaviour::default()
    };
    origin.set(tagged(
        "the old text, fetched by the old process",
        Some(gate.clone()),
    ));
    let disk = tempfile::tempdir().unwrap();
    let mut setup = site(&origin);
    setup.node_extra = "grace_period = \"10s\"\n".into();
    setup.body.push_str(&format!(
        "\n[cache]\ndisk_path = \"{}\"\n",
        disk.path().display()
    ));
    let mut old = Onair::start(setup).await;
    let http = old.http;
    // Two readers on the old process, their answers held halfway by the origin: first
    // /other, then /story.
    let other = tokio::spawn(async move { get(http, "a", "/other").await.unwrap() });
    assert!(eventually(Duration::from_secs(5), || async { origin.hits() == 1 }).await);
    let story = tokio::spawn(async move { get(http, "a", "/story").await.unwrap() });
    assert!(eventually(Duration::from_secs(5), || async { origin.hits() == 2 }).await);
    // The new process takes over; the old one drains.
    let new = Reaped(spawn(&old.config_path, &["-u"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The old process publishes /other now, after the new one's start-up scan...
    gate.add_permits(1);
    let r = other.await.unwrap();
    assert_eq!(r.text(), "the old text, fetched by the old process");
    // ...the newsroom corrects the story and purges the tag through the new process (the old
    // one accepts on the shared sockets for 5 s after SIGQUIT, Pingora's fixed hand-over
    // window, then only drains)...
    origin.set(tagged("the correction", None));
    tokio::time::sleep(Duration::from_millis(5_400)).await;
    let out = old.admin_post("/purge", r#"{"tags": ["election"]}"#).await;
    assert_eq!(out.status, 200, "{}", out.text());
    let out: serde_json::Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        out["purged"], 1,
        "the old process's publish was not indexed: {out}"
    );
    // ...and only then does the old process's /story fill finish.
    gate.add_permits(1);
    let r = story.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "the old text, fetched by the old process");
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    assert!(exited);
    // Neither old text comes back, from the new process or from disk after a restart.
    for path in ["/other", "/story"] {
        let r = get(http, "a", path).await.unwrap();
        assert_eq!(
            r.text(),
            "the correction",
            "{path}: {:?}",
            r.header("cache-status")
        );
    }
    drop(new);
}

/// Starts a new process with `-u` and has `old` hand its listeners over (SIGQUIT); returns
/// the new process once the old one has exited.
async fn hand_over(old: &mut Onair) -> Reaped {
    // The new process waits on the upgrade socket; SIGQUIT makes the old one hand over.
    let new = Reaped(spawn(&old.config_path, &["-u"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    assert!(exited, "the old process did not exit after handing over");
    new
}

/// GET, retried once when the connection closes or resets before any response byte, as HTTP clients
/// may do for idempotent requests (RFC 9110 §9.2.2). Pingora's graceful shutdown closes
/// connections that are waiting for a request, and a connection the old process accepted in
/// the instant before the hand-over is one of them (docs/operations.md, "Upgrade"). A response
/// cut after it started is not retried: that would be a real failure.
async fn get_retrying_unanswered(addr: std::net::SocketAddr, path: &str) -> std::io::Result<Resp> {
    for attempt in 0..2 {
        let mut sender = connect(addr).await?;
        let resp = match sender.send_request(get_request(path)).await {
            Ok(resp) => resp,
            // Closed or reset before any byte of an answer (a reset when the request bytes
            // were already in the closed socket's buffer).
            Err(_) if attempt == 0 => continue,
            Err(e) => return Err(std::io::Error::other(e)),
        };
        return read_whole(resp).await;
    }
    Err(std::io::Error::other("closed twice before answering"))
}
