//! The floor onair's pass-through is measured against: a Pingora proxy with no routing,
//! headers, metrics or logs, forwarding 127.0.0.1:8351 to the perf harness's origin on
//! 127.0.0.1:8300 with one worker thread. `cargo run --release --example bare_proxy`.
//! docs/benchmarks.md compares its per-request CPU with onair's to show what onair itself adds.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare;

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
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
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare);
    proxy.add_tcp("127.0.0.1:8351");
    server.add_service(proxy);
    server.run_forever();
}
