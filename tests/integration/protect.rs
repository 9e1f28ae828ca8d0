//! Protection: per-client rate limits end to end (429 with Retry-After, other clients
//! unaffected, per route), and client identity through trusted proxies.

use std::time::Duration;

use crate::common::*;

fn limited(origin: &Origin, protect: &str, route: &str) -> Setup {
    Setup::new(format!(
        "[protect]\n{protect}\n[[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n{route}\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ))
}

async fn statuses(
    onair: &Onair,
    from: [u8; 4],
    path: &str,
    n: usize,
    xff: Option<&str>,
) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let headers: Vec<(&str, &str)> = xff.map(|v| ("X-Forwarded-For", v)).into_iter().collect();
        // 0: the connection was refused at accept.
        out.push(
            get_from(onair.http, from, path, &headers)
                .await
                .map_or(0, |r| r.status),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_rate_a_client_gets_429_and_others_are_unaffected() {
    let origin = Origin::start("o").await;
    // 1 per minute with a burst of 3: a fast client gets exactly 3 through (a slow machine
    // cannot let a fourth in by taking a second over the six requests).
    let onair = Onair::start(limited(&origin, "rate = \"1/m\"\nburst = 3", "")).await;
    let first = statuses(&onair, [127, 0, 0, 1], "/", 3, None).await;
    assert_eq!(first, [200, 200, 200]);
    let asked = std::time::Instant::now();
    let r = get_from(onair.http, [127, 0, 0, 1], "/", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(
        asked.elapsed() >= Duration::from_millis(750),
        "the 429 is held back for protect.tarpit"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // While it stays over, its new connections are refused at accept.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 1], "/", 3, None).await,
        [0, 0, 0]
    );
    // Another client has its own allowance.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 2], "/", 3, None).await,
        [200, 200, 200]
    );
    // The origin saw only what was let through.
    assert_eq!(origin.proxied_hits(), 6);
    assert!(
        onair
            .metric_becomes("onair_rate_limited_total{reason=\"node\"}", |v| v == 1.0)
            .await
    );
    assert!(
        onair
            .metric_becomes("onair_connections_denied_total{reason=\"rate\"}", |v| v
                == 3.0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_be_stricter() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "",
        "  [[site.route]]\n  path = \"/api/\"\n  rate = \"1/m\"\n  burst = 2\n",
    ))
    .await;
    assert_eq!(
        statuses(&onair, [127, 0, 0, 1], "/api/live", 4, None).await,
        [200, 200, 429, 429]
    );
    // The rest of the site has no limit.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 1], "/page", 10, None).await,
        [200; 10]
    );
    let r = get_from(onair.http, [127, 0, 0, 1], "/api/live", &[])
        .await
        .unwrap();
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        retry > 20,
        "a minute's rate: wait tens of seconds, not {retry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_x_forwarded_for() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "trusted_proxies = [\"127.0.0.1/32\"]\nrate = \"1/m\"\nburst = 2",
        "",
    ))
    .await;
    // Through the load balancer (127.0.0.1): each reader has its own allowance.
    for reader in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(
            statuses(&onair, [127, 0, 0, 1], "/", 3, Some(reader)).await,
            [200, 200, 429],
            "{reader}"
        );
    }
    // A forged entry on the left changes nothing: the rightmost untrusted one counts.
    assert_eq!(
        statuses(
            &onair,
            [127, 0, 0, 1],
            "/",
            1,
            Some("203.0.113.9, 198.51.100.1")
        )
        .await,
        [429]
    );
    // From a peer that is not trusted, the header is ignored: the peer is the client.
    assert_eq!(
        statuses(&onair, [127, 0, 0, 3], "/", 3, Some("198.51.100.77")).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&onair, [127, 0, 0, 3], "/", 1, Some("198.51.100.78")).await,
        [0],
        "a new forged address does not buy a new allowance"
    );
    // The origin sees the chain with the hop onair got the request from appended.
    let seen = origin.last_proxied().unwrap();
    assert_eq!(seen["x-forwarded-for"], "198.51.100.77, 127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_ambiguous_requests_never_reach_the_origin() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "max_header = \"4KiB\"\nmax_uri = \"1KiB\"\nmax_body = \"1KiB\"",
        "",
    ))
    .await;
    let wait = Duration::from_secs(2);
    // (Connection: close only so that each exchange ends without waiting for a timeout.)
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "u".repeat(1100)
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: {}\r\n\r\n",
        "c".repeat(5000)
    );
    let cases: Vec<(String, &str)> = vec![
        (long_uri, "HTTP/1.1 414"),
        (big_header, "HTTP/1.1 431"),
        (
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n".to_owned(),
            "HTTP/1.1 413",
        ),
        (
            "TRACE / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_owned(),
            "HTTP/1.1 405",
        ),
        // Smuggling: both framings, then a second request hidden in the body.
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
                .to_owned(),
            "HTTP/1.1 400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello"
                .to_owned(),
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in &cases {
        let answer = raw_exchange(onair.http, request.as_bytes(), wait).await;
        assert!(
            answer.starts_with(expected),
            "{expected} for {:?}...: got {:?}",
            &request[..request.len().min(60)],
            &answer[..answer.len().min(200)]
        );
        // One answer only: nothing smuggled behind it got through.
        assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    }
    assert_eq!(origin.proxied_hits(), 0, "the origin saw none of them");
    // A chunked body that grows past max_body is cut off with 413.
    let chunk = format!("{:x}\r\n{}\r\n", 800, "b".repeat(800));
    let chunked = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}{chunk}0\r\n\r\n"
    );
    let answer = raw_exchange(onair.http, chunked.as_bytes(), wait).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A well-formed request still goes through.
    assert_eq!(get(onair.http, "a", "/fine").await.unwrap().status, 200);
    // (Pingora itself refuses differing Content-Length values with 400 before onair sees the
    // request; the other refusals are onair's.)
    for reason in ["uri", "header_size", "body", "method", "smuggling"] {
        let series = format!("onair_requests_refused_total{{reason=\"{reason}\"}}");
        assert!(
            eventually(Duration::from_secs(5), || async {
                onair.metric(&series).await.unwrap_or(0.0) >= 1.0
            })
            .await,
            "{series}: {:?}",
            onair.metric(&series).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_addresses_are_dropped_at_accept_and_reloads_apply() {
    let origin = Origin::start("o").await;
    let setup = |deny: &str| {
        limited(
            &origin,
            &format!(
                "trusted_proxies = [\"127.0.0.1/32\"]\ndeny = [{deny}]\nallow = [\"127.0.0.3/32\"]"
            ),
            "",
        )
    };
    let onair = Onair::start(setup(
        "\"127.0.0.2/32\", \"127.0.0.3/32\", \"198.51.100.0/24\"",
    ))
    .await;
    // Denied: the connection is closed before a byte of HTTP.
    assert!(get_from(onair.http, [127, 0, 0, 2], "/", &[])
        .await
        .is_err());
    // Allowed carves an exception out of a denied range; others are untouched.
    assert_eq!(
        get_from(onair.http, [127, 0, 0, 3], "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get_from(onair.http, [127, 0, 0, 4], "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
    // Behind the trusted proxy, a denied client is refused per request.
    let r = get_from(
        onair.http,
        [127, 0, 0, 1],
        "/",
        &[("X-Forwarded-For", "198.51.100.20")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(origin.proxied_hits(), 2, "only the two allowed requests");
    assert!(
        onair
            .metric("onair_connections_denied_total{reason=\"deny\"}")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
    // The list follows reloads.
    onair.rewrite(&setup("\"127.0.0.4/32\""));
    assert_eq!(onair.admin("POST", "/reload").await.status, 200);
    assert_eq!(
        get_from(onair.http, [127, 0, 0, 2], "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert!(get_from(onair.http, [127, 0, 0, 4], "/", &[])
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_connections_are_bounded_in_time_and_requests() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "keepalive_timeout = \"1s\"\nkeepalive_requests = 3",
        "",
    ))
    .await;
    // Three requests per connection, then the server says close.
    let mut sender = connect(onair.http).await.unwrap();
    for i in 0..3 {
        // The client's connection takes a moment to be idle again after an answer.
        sender.ready().await.unwrap();
        let r = read_whole(sender.send_request(get_request("/")).await.unwrap())
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let close = r.header("connection") == Some("close");
        assert_eq!(close, i == 2, "request {i}: {:?}", r.header("connection"));
    }
    // An idle connection is closed after keepalive_timeout.
    let mut stream = tokio::net::TcpStream::connect(onair.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the idle connection stayed open");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(3),
        "closed after {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_at_header_timeout_from_accept() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(&origin, "header_timeout = \"1s\"", "")).await;
    // One header byte every 100 ms keeps every single read well inside any per-read timeout.
    let mut stream = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    let started = std::time::Instant::now();
    let head =
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut_at = None;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_at = match cut_at {
        Some(t) => t,
        None => {
            time_to_close(&mut stream, Duration::from_secs(5)).await;
            started.elapsed()
        }
    };
    assert!(
        cut_at >= Duration::from_millis(900) && cut_at < Duration::from_millis(2500),
        "cut after {cut_at:?}"
    );
    // A connection that sends nothing at all is cut on the same clock.
    let mut silent = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    let closed = time_to_close(&mut silent, Duration::from_secs(5)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(900)),
        "{closed:?}"
    );
    assert_eq!(origin.proxied_hits(), 0);
    assert!(
        onair
            .metric_becomes("onair_slow_clients_total{reason=\"header\"}", |v| v >= 2.0)
            .await
    );
    // A normal client on a fresh connection is served.
    assert_eq!(
        get_from(onair.http, [127, 0, 0, 1], "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_are_capped_and_others_are_served() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "max_connections_per_ip = 100\nheader_timeout = \"30s\"",
        "",
    ))
    .await;
    // 300 idle connections from one address: the first 100 are held open, the rest closed at
    // once.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tcp_from(onair.http, [127, 0, 0, 2]).await.unwrap());
    }
    let mut closed = 0;
    for stream in idle.iter_mut() {
        if time_to_close(stream, Duration::from_millis(20))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 200, "connections over the cap are closed");
    // Another client is served within a second, on several fresh connections.
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let r = get_from(onair.http, [127, 0, 0, 1], "/", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // The capped address itself gets nothing more until it closes some.
    assert!(get_from(onair.http, [127, 0, 0, 2], "/", &[])
        .await
        .is_err());
    idle.truncate(50);
    assert!(
        eventually(Duration::from_secs(5), || async {
            get_from(onair.http, [127, 0, 0, 2], "/", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await,
        "closing connections frees their slots"
    );
    assert!(
        onair
            .metric("onair_connections_denied_total{reason=\"per_ip\"}")
            .await
            .unwrap_or(0.0)
            >= 200.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_below_the_minimum_rate_is_cut() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "min_upload_rate = \"1KiB\"\nbody_timeout = \"1s\"",
        "",
    ))
    .await;
    let mut stream = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    // 20 bytes every 100 ms is 200 B/s, a fifth of the minimum: allowed waiting is 1 s plus
    // 1 s per KiB received, so the cut comes after about 1.25 s.
    let started = std::time::Instant::now();
    let mut cut_at = None;
    for _ in 0..100 {
        if stream.write_all(&[b'a'; 20]).await.is_err() {
            cut_at = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_at = cut_at.unwrap_or_else(|| started.elapsed());
    assert!(
        cut_at >= Duration::from_secs(1) && cut_at < Duration::from_secs(4),
        "cut after {cut_at:?}"
    );
    assert!(
        onair
            .metric_becomes("onair_slow_clients_total{reason=\"upload\"}", |v| v == 1.0)
            .await
    );
    // A fast upload of the same size goes through.
    let body = vec![b'a'; 100_000];
    let mut fast = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    fast.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    fast.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    use tokio::io::AsyncReadExt;
    fast.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_at_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("o").await;
    let total: u64 = 64 << 20;
    origin.set(Behaviour {
        stream_bytes: Some(total),
        headers: vec![("Cache-Control".into(), "no-store".into())],
        ..Behaviour::default()
    });
    let onair = Onair::start(limited(&origin, "send_timeout = \"1s\"", "")).await;
    let mut stream = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    stream
        .write_all(b"GET /video HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A slow-read attacker: takes nothing more for a while (the socket buffers fill up).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = n as u64;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k as u64,
        }
    }
    assert!(got < total, "the whole answer was written: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_l4_balancer_the_proxy_protocol_header_names_the_client() {
    let origin = Origin::start("o").await;
    let port = free_port();
    let onair = Onair::start(
        limited(
            &origin,
            "trusted_proxies = [\"127.0.0.1/32\"]\ndeny = [\"198.51.100.66/32\"]\n\
             rate = \"1/m\"\nburst = 2\ntarpit = \"0s\"",
            "",
        )
        .with_listen(&format!("proxy_protocol = [\"127.0.0.1:{port}\"]")),
    )
    .await;
    let balancer: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let v1 = |client: &str| {
        [
            format!("PROXY TCP4 {client} 203.0.113.1 40000 80\r\n").as_bytes(),
            get,
        ]
        .concat()
    };
    let wait = Duration::from_secs(2);
    // Limits count the client the header names, not the balancer.
    for expect in ["200", "200", "429"] {
        let answer = raw_exchange(balancer, &v1("198.51.100.7"), wait).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expect}")),
            "{answer}"
        );
    }
    // v2, another client: its own allowance.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 8, 203, 0, 113, 1, 0x9c, 0x40, 0, 80]);
    v2.extend_from_slice(get);
    let answer = raw_exchange(balancer, &v2, wait).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A denied client behind the balancer, one told off by the rate limit, and a connection
    // without a header get nothing.
    assert_eq!(raw_exchange(balancer, &v1("198.51.100.66"), wait).await, "");
    assert_eq!(raw_exchange(balancer, &v1("198.51.100.7"), wait).await, "");
    assert_eq!(raw_exchange(balancer, get, wait).await, "");
    // A header from a peer that is not a trusted balancer is a forgery: closed.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut forger = tcp_from(balancer, [127, 0, 0, 2]).await.unwrap();
        let _ = forger.write_all(&v1("203.0.113.200")).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(wait, forger.read_to_end(&mut answer)).await;
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            let logged: Vec<String> = onair
                .access_log()
                .iter()
                .filter_map(|e| e["client_ip"].as_str().map(str::to_owned))
                .collect();
            logged.iter().any(|ip| ip == "198.51.100.7")
                && logged.iter().any(|ip| ip == "198.51.100.8")
        })
        .await,
        "the access log names the clients"
    );
    assert_eq!(
        onair
            .metric("onair_connections_denied_total{reason=\"proxy_protocol\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(origin.proxied_hits(), 3);
    // The plain listener is unchanged.
    assert_eq!(
        get_from(onair.http, [127, 0, 0, 1], "/", &[])
            .await
            .unwrap()
            .status,
        200
    );
}

/// Many addresses of one block are one sender: beside the per-client limit, the /24 (IPv4) or
/// /48 (IPv6) has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_of_one_block_share_the_block_limit() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(limited(
        &origin,
        "rate = \"1/m\"\nburst = 3\nblock_rate = \"1/m\"\nblock_burst = 5",
        "",
    ))
    .await;
    // Two addresses of 127.0.0.0/24: 3 + 2 get through, the block's burst.
    let a = statuses(&onair, [127, 0, 0, 2], "/", 3, None).await;
    assert_eq!(a, [200, 200, 200]);
    let b = statuses(&onair, [127, 0, 0, 3], "/", 3, None).await;
    assert_eq!(b, [200, 200, 429]);
    assert!(
        onair
            .metric_becomes("onair_rate_limited_total{reason=\"block\"}", |v| v >= 1.0)
            .await
    );
    // Another /24 is another block.
    let c = statuses(&onair, [127, 0, 1, 3], "/", 1, None).await;
    assert_eq!(c, [200]);
}
