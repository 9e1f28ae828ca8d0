//! A sample origin server for `onair demo`: serves the news site from
//! [`super::site`] over HTTP/1.1 and can be stopped and resumed at run time,
//! so a demo user can kill the primary origin and watch the edge fail over
//! to the backup or serve stale content.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Mutex};
use tokio::task::{JoinHandle, JoinSet};

use super::site;

/// One sample origin, up or down.
pub struct SampleOrigin {
    name: &'static str,
    /// The address actually bound at start; resume re-binds exactly this one
    /// so the edge's upstream config stays valid across a stop.
    addr: SocketAddr,
    /// `None` while stopped. A mutex so concurrent stop/resume calls (from
    /// the control server) cannot leave two accept loops on one address.
    running: Mutex<Option<Running>>,
    /// Readable without the async lock, for status pages.
    up: AtomicBool,
}

struct Running {
    /// Sending, or dropping, this ends the accept loop, which then aborts
    /// every open connection. Dropping covers a `SampleOrigin` that is
    /// dropped without being stopped.
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl SampleOrigin {
    /// Binds `addr` (port 0 picks an ephemeral port) and serves the sample
    /// site from a spawned task.
    pub async fn start(name: &'static str, addr: SocketAddr) -> io::Result<Arc<SampleOrigin>> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let running = spawn_server(name, listener);
        tracing::info!(origin = name, %addr, "sample origin listening");
        Ok(Arc::new(SampleOrigin {
            name,
            addr,
            running: Mutex::new(Some(running)),
            up: AtomicBool::new(true),
        }))
    }

    /// The name shown in `X-Origin` and in page footers.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The bound address, with the real port when started on port 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Simulates killing the origin: closes the listener and aborts open
    /// connections (in-flight responses are cut), so that new connections
    /// are refused and pooled keep-alive connections die. Returns once all of
    /// that is done. Does nothing if already stopped.
    pub async fn stop(&self) {
        let mut running = self.running.lock().await;
        let Some(Running { shutdown, task }) = running.take() else {
            return;
        };
        self.up.store(false, Ordering::SeqCst);
        // An error means the loop already ended, which is what we want.
        let _ = shutdown.send(());
        if let Err(err) = task.await {
            tracing::warn!(origin = self.name, error = %err, "sample origin task failed");
        }
        tracing::info!(origin = self.name, addr = %self.addr, "sample origin stopped");
    }

    /// Re-binds the original address and serves again. Does nothing if the
    /// origin is already up.
    pub async fn resume(&self) -> io::Result<()> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref() {
            if !r.task.is_finished() {
                return Ok(());
            }
        }
        let listener = bind(self.addr)?;
        *running = Some(spawn_server(self.name, listener));
        self.up.store(true, Ordering::SeqCst);
        tracing::info!(origin = self.name, addr = %self.addr, "sample origin resumed");
        Ok(())
    }
}

/// SO_REUSEADDR lets `resume` re-bind right after `stop`, while the
/// connections we just closed still hold the port in TIME_WAIT. Windows gives
/// that option a port-stealing meaning, so it is left off there.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if cfg!(unix) {
        socket.set_reuseaddr(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_server(name: &'static str, listener: TcpListener) -> Running {
    let (shutdown, rx) = oneshot::channel();
    let task = tokio::spawn(accept_loop(name, listener, rx));
    Running { shutdown, task }
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    mut shutdown: oneshot::Receiver<()>,
) {
    // Connection tasks live in a JoinSet owned here so that stopping can
    // abort them all and wait until their sockets are closed.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(name, stream));
                }
                Err(err) => {
                    // Usually fd exhaustion; back off instead of spinning.
                    tracing::warn!(origin = name, error = %err, "sample origin accept failed");
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn serve_connection(name: &'static str, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| async move {
        let resp = site::respond(name, req.method(), req.uri().path());
        Ok::<_, Infallible>(resp.map(Full::new))
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        tracing::debug!(origin = name, error = %err, "sample origin connection ended");
    }
}

#[cfg(test)]
// Panicking on a broken fixture is the point of a test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn fetch(addr: SocketAddr, path: &str) -> io::Result<String> {
        let mut conn = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    #[tokio::test]
    async fn stop_refuses_and_resume_serves_again() {
        let origin = SampleOrigin::start("primary", localhost()).await.unwrap();
        let addr = origin.addr();
        assert_ne!(addr.port(), 0);
        assert!(origin.is_up());

        let page = fetch(addr, "/").await.unwrap();
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        assert!(page.to_ascii_lowercase().contains("x-origin: primary"));
        assert!(page.contains("served by origin: <strong>primary</strong>"));

        origin.stop().await;
        assert!(!origin.is_up());
        let err = fetch(addr, "/").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        origin.stop().await;

        origin.resume().await.unwrap();
        assert!(origin.is_up());
        assert_eq!(origin.addr(), addr);
        let page = fetch(addr, "/news/lich-phat-song").await.unwrap();
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        origin.resume().await.unwrap();
        let page = fetch(addr, "/healthz").await.unwrap();
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    }

    #[tokio::test]
    async fn stop_kills_keep_alive_connections() {
        let origin = SampleOrigin::start("backup", localhost()).await.unwrap();
        let mut conn = TcpStream::connect(origin.addr()).await.unwrap();
        let mut buf = Vec::new();
        for _ in 0..2 {
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: demo\r\n\r\n")
                .await
                .unwrap();
            buf.clear();
            while !buf.ends_with(b"\r\n\r\nok\n") {
                let mut chunk = [0u8; 1024];
                let n = conn.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "origin closed a keep-alive connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        }

        origin.stop().await;
        let mut chunk = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn head_keeps_content_length() {
        let origin = SampleOrigin::start("primary", localhost()).await.unwrap();
        let mut conn = TcpStream::connect(origin.addr()).await.unwrap();
        conn.write_all(
            b"HEAD /static/style.css HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let expected = site::respond("primary", &http::Method::GET, "/static/style.css")
            .body()
            .len();
        assert!(
            text.contains(&format!("content-length: {expected}\r\n")),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
