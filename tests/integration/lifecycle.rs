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
                match get(http, "a", "/").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process waits on the upgrade socket; SIGQUIT makes the old one hand over.
    let mut new = spawn(&old.config_path, &["-u"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let exited = tokio::task::block_in_place(|| old.wait_exit(Duration::from_secs(15)));
    assert!(exited, "the old process did not exit after handing over");
    let before = ok.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();

    let served_after = ok.load(Ordering::SeqCst) - before;
    let _ = new.kill();
    let _ = new.wait();
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
