//! The floors onair is measured against, with one worker thread and no routing, headers,
//! metrics or logs. `cargo run --release --example bare_proxy`.
//! - Default: a Pingora proxy forwarding 127.0.0.1:8351 to the perf harness's origin on
//!   127.0.0.1:8300; docs/benchmarks.md compares its per-request CPU with onair's pass-through
//!   to show what onair itself adds.
//! - `BARE_STATIC=1`: answers every request from `request_filter` with a fixed 1 KiB body and
//!   the headers of a cache hit, never touching an origin or a cache. No Pingora-based cache can
//!   serve a hit for less: this is the ceiling of onair's hit throughput (docs/benchmarks.md).
//! - `BARE_PORT`: the listening port (default 8351).

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    /// When set, every request gets this body straight from `request_filter`.
    static_body: Option<Bytes>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _c: &mut ()) -> Result<bool> {
        let Some(body) = &self.static_body else {
            return Ok(false);
        };
        let mut resp = ResponseHeader::build(200, Some(8))?;
        resp.insert_header("Content-Type", "application/octet-stream")?;
        resp.insert_header("Content-Length", body.len().to_string())?;
        resp.insert_header("Cache-Control", "public, max-age=3600")?;
        resp.insert_header("ETag", "\"6b0cf7e5-400\"")?;
        resp.insert_header("Age", "1")?;
        session.write_response_header(Box::new(resp), false).await?;
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            "127.0.0.1:8300",
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut conf = ServerConf::new().unwrap_or_default();
    conf.threads = 1;
    conf.work_stealing = false;
    conf.grace_period_seconds = Some(0);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let bare = Bare {
        static_body: std::env::var_os("BARE_STATIC").map(|_| Bytes::from(vec![b'x'; 1024])),
    };
    let port = std::env::var("BARE_PORT").unwrap_or_else(|_| "8351".into());
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(proxy);
    server.run_forever();
}
