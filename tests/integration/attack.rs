//! Attack mode end to end: uncleared clients get cache hits but never reach the origin, the
//! challenge is solved (in Rust, and by the page's own JavaScript under node), the clearance
//! cookie works on a second node sharing the key, and forged, expired and foreign cookies are
//! refused. `auto` turns on under a flood and off after the cooldown.

use std::time::Duration;

use crate::common::*;

const KEY: &str = "9f2c1e7a5b3d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6";

fn setup(origin: &Origin, attack: &str) -> Setup {
    Setup::new(format!(
        "[protect]\nallow = [\"127.0.2.0/24\"]\n[protect.attack]\nkey_file = \"attack.key\"\n\
         difficulty = 12\n{attack}\n\
         [[site]]\nname = \"s\"\nhosts = [\"*\"]\npool = \"p\"\n\
         [[pool]]\nname = \"p\"\n  [[pool.origin]]\n  addr = \"{}\"\n",
        origin.addr
    ))
    .with_file("attack.key", KEY)
}

fn cacheable() -> Behaviour {
    Behaviour {
        headers: vec![("Cache-Control".into(), "max-age=600".into())],
        ..Behaviour::default()
    }
}

/// A browser loading a page (the challenge page is for those).
async fn get_as(onair: &Onair, from: [u8; 4], path: &str, cookie: Option<&str>) -> Resp {
    let mut headers = vec![("Accept", "text/html,*/*;q=0.8")];
    headers.extend(cookie.map(|c| ("Cookie", c)));
    get_from(onair.http, from, path, &headers).await.unwrap()
}

/// The challenge and difficulty a challenge page carries.
fn challenge_of(page: &Resp) -> (String, u32) {
    let text = page.text();
    let field = |name: &str| -> String {
        let start = text.find(name).expect(name) + name.len();
        text[start..]
            .split(['"', ','])
            .find(|s| !s.trim().is_empty())
            .unwrap()
            .trim()
            .to_owned()
    };
    let challenge = field("var challenge = \"");
    let bits = field("bits = ").parse().unwrap();
    (challenge, bits)
}

fn leading_zero_bits(bytes: &[u8]) -> u32 {
    let mut bits = 0;
    for &b in bytes {
        if b != 0 {
            return bits + b.leading_zeros();
        }
        bits += 8;
    }
    bits
}

fn solve(challenge: &str, bits: u32) -> u64 {
    (0u64..)
        .find(|n| {
            let h =
                ring::digest::digest(&ring::digest::SHA256, format!("{challenge}:{n}").as_bytes());
            leading_zero_bits(h.as_ref()) >= bits
        })
        .unwrap()
}

/// The `onair_clearance=...` pair of a Set-Cookie.
fn cookie_of(resp: &Resp) -> String {
    resp.header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

/// A cookie signed with the fleet key, as a node would make it (for the expired case).
fn signed_cookie(prefix: &str, expires: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let msg = format!("onair-clearance-v1\n{expires}\n{prefix}");
    let tag = ring::hmac::sign(&key, msg.as_bytes());
    let mac: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("onair_clearance={expires}.{mac}")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_mode_challenges_uncleared_misses_and_clears_solvers_on_every_node() {
    let origin = Origin::start("o").await;
    origin.set(cacheable());
    let onair = Onair::start(setup(&origin, "mode = \"off\"")).await;
    // Cached before the attack.
    assert_eq!(
        get_as(&onair, [127, 0, 0, 1], "/cached", None).await.status,
        200
    );
    let before = origin.proxied_hits();

    let r = onair.admin_post("/attack-mode", "{\"mode\": \"on\"}").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let json: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    assert_eq!(json["active"], true, "{json}");
    assert_eq!(onair.metric("onair_attack_mode").await, Some(1.0));

    // Uncleared: the cached page is served, a miss gets the challenge, the origin sees nothing.
    let hit = get_as(&onair, [127, 0, 0, 1], "/cached", None).await;
    assert_eq!(hit.status, 200);
    let page = get_as(&onair, [127, 0, 0, 1], "/news/new?id=1", None).await;
    assert_eq!(page.status, 403);
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(page.text().contains("role=\"status\""));
    // A script's fetch could not show the page: 503 + Retry-After instead.
    let api = get_from(
        onair.http,
        [127, 0, 0, 1],
        "/api/live",
        &[("Sec-Fetch-Mode", "cors"), ("Accept", "application/json")],
    )
    .await
    .unwrap();
    assert_eq!(api.status, 503);
    assert!(api.header("retry-after").is_some());
    assert_eq!(
        origin.proxied_hits(),
        before,
        "nothing uncleared reached the origin"
    );

    // A wrong answer gets a new challenge, not a cookie.
    let (challenge, bits) = challenge_of(&page);
    assert_eq!(bits, 12);
    let n = solve(&challenge, bits);
    let wrong = get_as(
        &onair,
        [127, 0, 0, 1],
        &format!(
            "/.onair/challenge?c={challenge}&n={}&r=%2Fnews%2Fnew%3Fid%3D1",
            n + 1
        ),
        None,
    )
    .await;
    if leading_zero_bits(
        ring::digest::digest(
            &ring::digest::SHA256,
            format!("{challenge}:{}", n + 1).as_bytes(),
        )
        .as_ref(),
    ) < bits
    {
        assert_eq!(wrong.status, 403);
        assert!(wrong.header("set-cookie").is_none());
    }
    // The right one earns the cookie and goes back where the reader was going.
    let solved = get_as(
        &onair,
        [127, 0, 0, 1],
        &format!("/.onair/challenge?c={challenge}&n={n}&r=%2Fnews%2Fnew%3Fid%3D1"),
        None,
    )
    .await;
    assert_eq!(solved.status, 303);
    assert_eq!(solved.header("location"), Some("/news/new?id=1"));
    let set_cookie = solved.header("set-cookie").unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("Max-Age=3600"));
    let cookie = cookie_of(&solved);
    let r = get_as(&onair, [127, 0, 0, 1], "/news/new?id=1", Some(&cookie)).await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.proxied_hits(), before + 1);

    // A second node with the same key file accepts the cookie.
    let second = Onair::start(setup(&origin, "mode = \"on\"")).await;
    let r = get_as(&second, [127, 0, 0, 1], "/news/other", Some(&cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.proxied_hits(), before + 2);
    // Within the same /24 too; not from another block.
    assert_eq!(
        get_as(&second, [127, 0, 0, 9], "/news/3", Some(&cookie))
            .await
            .status,
        200
    );
    assert_eq!(
        get_as(&second, [127, 0, 1, 1], "/news/4", Some(&cookie))
            .await
            .status,
        403
    );
    // Forged and expired cookies are refused.
    // The MAC's last hex digit changed (to another digit whatever it was).
    let last = if cookie.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    assert_eq!(
        get_as(&second, [127, 0, 0, 1], "/news/5", Some(&forged))
            .await
            .status,
        403
    );
    let expired = signed_cookie("127.0.0.0/24", unix_now() - 10);
    assert_eq!(
        get_as(&second, [127, 0, 0, 1], "/news/6", Some(&expired))
            .await
            .status,
        403
    );
    let valid = signed_cookie("127.0.0.0/24", unix_now() + 60);
    assert_eq!(
        get_as(&second, [127, 0, 0, 1], "/news/7", Some(&valid))
            .await
            .status,
        200
    );
    // Allow-listed ranges skip the challenge.
    assert_eq!(
        get_as(&second, [127, 0, 2, 1], "/news/8", None)
            .await
            .status,
        200
    );
    assert_eq!(origin.proxied_hits(), before + 5);

    // Off again: uncleared misses reach the origin.
    let r = onair
        .admin_post("/attack-mode", "{\"mode\": \"off\"}")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get_as(&onair, [127, 0, 0, 1], "/news/9", None).await.status,
        200
    );
    assert_eq!(onair.metric("onair_attack_mode").await, Some(0.0));
    let bad = onair
        .admin_post("/attack-mode", "{\"mode\": \"panic\"}")
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        onair
            .metric_becomes("onair_challenges_total{result=\"passed\"}", |v| v == 1.0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_own_javascript_solves_the_challenge() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(setup(&origin, "mode = \"on\"")).await;
    let page = get_as(&onair, [127, 0, 0, 1], "/live?x=1", None).await;
    assert_eq!(page.status, 403);
    let text = page.text();
    let script = text
        .split("<script>")
        .nth(1)
        .and_then(|s| s.split("</script>").next())
        .unwrap();
    // A browser without crypto.subtle, reduced to what the script touches.
    let harness = format!(
        "globalThis.document = {{ getElementById: function () {{ return {{}}; }} }};\n\
         globalThis.location = {{ replace: function (u) {{ console.log(u); }} }};\n\
         globalThis.setTimeout = function (f) {{ f(); }};\n{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("page.js");
    std::fs::write(&file, harness).unwrap();
    let out = std::process::Command::new("node")
        .arg(&file)
        .output()
        .expect("node runs (scripts/setup.sh installs nodejs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(url.starts_with("/.onair/challenge?c="), "{url}");
    let solved = get_as(&onair, [127, 0, 0, 1], &url, None).await;
    assert_eq!(solved.status, 303, "{}", solved.text());
    assert_eq!(solved.header("location"), Some("/live?x=1"));
    let cookie = cookie_of(&solved);
    let r = get_as(&onair, [127, 0, 0, 1], "/live?x=1", Some(&cookie)).await;
    assert_eq!(r.status, 200);
}

/// The no-JavaScript wait costs a bot nothing but time: it is off unless a site opts in, and
/// then it waits longer, clears for less long, and each address block may redeem it only so
/// many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_javascript_path_is_opt_in_and_bounded() {
    let origin = Origin::start("o").await;
    let onair = Onair::start(setup(&origin, "mode = \"on\"")).await;
    // Off by default: no refresh on the page, and a crafted wait answer is refused.
    let page = get_as(&onair, [127, 0, 0, 1], "/live", None).await;
    assert!(
        !page.text().contains("http-equiv=\"refresh\""),
        "{}",
        page.text()
    );
    let (token, _) = challenge_of(&page);
    let crafted = format!("/.onair/challenge?c={token}&n=wait&r=/live");
    let r = get_as(&onair, [127, 0, 0, 1], &crafted, None).await;
    assert_eq!(r.status, 403, "a wait answer on a site without the path");
    assert!(r.header("set-cookie").is_none());

    // Opted in, with its bounds.
    let mut on = setup(
        &origin,
        "mode = \"on\"\nnojs_wait = \"5s\"\nnojs_clearance = \"2m\"\nnojs_per_block = 2",
    );
    on.body = on
        .body
        .replace("pool = \"p\"\n", "pool = \"p\"\nnojs_challenge = true\n");
    onair.rewrite(&on);
    assert_eq!(onair.admin("POST", "/reload").await.status, 200);
    let mut refreshes = Vec::new();
    for host in 1..=3u8 {
        let page = get_as(&onair, [127, 0, 0, host], "/live?x=2", None).await;
        let text = page.text();
        assert!(text.contains("content=\"5;url="), "{text}");
        let refresh = text
            .split("url=")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .replace("&amp;", "&");
        refreshes.push((host, refresh));
    }
    let (_, first) = &refreshes[0];
    let early = get_as(&onair, [127, 0, 0, 1], first, None).await;
    assert_eq!(early.status, 403, "too early: a new challenge");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut statuses = Vec::new();
    for (host, refresh) in &refreshes {
        let r = get_as(&onair, [127, 0, 0, *host], refresh, None).await;
        if r.status == 303 {
            assert_eq!(r.header("location"), Some("/live?x=2"));
            assert!(
                r.header("set-cookie").unwrap().contains("Max-Age=120"),
                "a no-JavaScript clearance is short"
            );
        }
        statuses.push(r.status);
    }
    // Three addresses of one /24: two redemptions, then the block's budget is spent.
    assert_eq!(statuses, [303, 303, 403]);
    assert!(
        onair
            .metric_becomes("onair_challenges_total{result=\"nojs_refused\"}", |v| v
                == 1.0)
            .await
    );
    assert!(
        onair
            .metric_becomes("onair_challenges_total{result=\"passed_nojs\"}", |v| v
                == 2.0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_turns_on_under_a_flood_and_off_after_the_cooldown() {
    let origin = Origin::start("o").await;
    origin.set(cacheable());
    let onair = Onair::start(setup(
        &origin,
        "mode = \"auto\"\ntrigger_rps = 40\ncooldown = \"1s\"",
    ))
    .await;
    assert_eq!(
        get_as(&onair, [127, 0, 0, 1], "/hot", None).await.status,
        200
    );
    // A flood of hits on one keep-alive connection until the node notices.
    let started = std::time::Instant::now();
    let mut flooded = false;
    while !flooded && started.elapsed() < Duration::from_secs(10) {
        // A connection per 100 (one carries at most keepalive_requests).
        let mut sender = connect(onair.http).await.unwrap();
        for _ in 0..100 {
            sender.ready().await.unwrap();
            let r = read_whole(sender.send_request(get_request("/hot")).await.unwrap())
                .await
                .unwrap();
            assert_eq!(r.status, 200, "hits are served throughout");
        }
        flooded = onair.metric("onair_attack_mode").await == Some(1.0);
    }
    assert!(flooded, "attack mode did not turn on");
    let before = origin.proxied_hits();
    assert_eq!(
        get_as(&onair, [127, 0, 0, 1], "/miss", None).await.status,
        403
    );
    assert_eq!(origin.proxied_hits(), before);
    // Quiet: off after the cooldown, and misses reach the origin again.
    assert!(
        onair
            .metric_becomes("onair_attack_mode", |v| v == 0.0)
            .await
    );
    assert_eq!(
        get_as(&onair, [127, 0, 0, 1], "/miss", None).await.status,
        200
    );
    let status = onair.admin("GET", "/status").await.text();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["attack"]["mode"], "auto", "{status}");
    assert_eq!(status["attack"]["set_by"], "config", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_page_read_by_an_uncleared_reader_still_refreshes() {
    let origin = Origin::start("o").await;
    origin.set(Behaviour {
        headers: vec![(
            "Cache-Control".into(),
            "max-age=1, stale-while-revalidate=60".into(),
        )],
        ..Behaviour::default()
    });
    let onair = Onair::start(setup(&origin, "mode = \"on\"")).await;
    // Stored by a reader the allow list clears.
    assert_eq!(
        get_as(&onair, [127, 0, 2, 1], "/live", None).await.status,
        200
    );
    let before = origin.proxied_hits();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // An uncleared reader gets the stale copy, and the node's own background refresh is not
    // mistaken for that reader: it reaches the origin.
    let r = get_as(&onair, [127, 0, 0, 1], "/live", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("cache-status")
            .unwrap()
            .contains("stale-while-revalidate"),
        "{:?}",
        r.header("cache-status")
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            origin.proxied_hits() == before + 1
        })
        .await,
        "the page was refreshed"
    );
    assert!(
        onair
            .metric_becomes("onair_challenges_total{result=\"issued\"}", |v| v == 0.0)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_without_reading_its_body_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start("o").await;
    let onair = Onair::start(setup(&origin, "mode = \"on\"")).await;
    let mut stream = tcp_from(onair.http, [127, 0, 0, 1]).await.unwrap();
    stream
        .write_all(
            b"POST /comment HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\nContent-Length: 3\r\n\r\na=1",
        )
        .await
        .unwrap();
    // The challenge answers it; the unread body is not left for a drain under no clock.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 403"));
    assert_eq!(origin.proxied_hits(), 0);
}
