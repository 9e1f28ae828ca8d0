//! The `onair demo` control server: lets a demo user stop and start the
//! sample origins with plain `curl -X POST`, to watch the edge fail over,
//! serve stale content, and recover.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::origin::SampleOrigin;

/// Serves the control API on `listener` until the returned future is
/// dropped; dropping it also closes every open control connection.
pub async fn serve_control(
    listener: TcpListener,
    primary: Arc<SampleOrigin>,
    backup: Arc<SampleOrigin>,
) {
    // Only for the usage hint on the status page.
    let base = match listener.local_addr() {
        Ok(addr) => format!("http://{addr}"),
        Err(_) => String::from("http://CONTROL-ADDRESS"),
    };
    let base: Arc<str> = Arc::from(base);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let (primary, backup, base) = (primary.clone(), backup.clone(), base.clone());
                    conns.spawn(async move {
                        let service = service_fn(move |req: Request<Incoming>| {
                            let (primary, backup, base) = (primary.clone(), backup.clone(), base.clone());
                            async move {
                                let resp = handle(&primary, &backup, &base, req.method(), req.uri().path()).await;
                                Ok::<_, Infallible>(resp.map(Full::new))
                            }
                        });
                        let result = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(err) = result {
                            tracing::debug!(error = %err, "demo control connection ended");
                        }
                    });
                }
                Err(err) => {
                    // Usually fd exhaustion; back off instead of spinning.
                    tracing::warn!(error = %err, "demo control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn handle(
    primary: &SampleOrigin,
    backup: &SampleOrigin,
    base: &str,
    method: &Method,
    path: &str,
) -> Response<Bytes> {
    // Forgive a trailing slash; people type these by hand.
    let path = match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    if path == "/" {
        if *method != Method::GET && *method != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        return text(StatusCode::OK, status_text(primary, backup, base));
    }

    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let origin = match parts.next() {
        Some("primary") => primary,
        Some("backup") => backup,
        _ => return text(StatusCode::NOT_FOUND, not_found_text(path)),
    };
    let action = parts.next().unwrap_or("");
    if action != "stop" && action != "start" {
        return text(StatusCode::NOT_FOUND, not_found_text(path));
    }
    if *method != Method::POST {
        return not_allowed("POST");
    }

    let (name, addr) = (origin.name(), origin.addr());
    if action == "stop" {
        let was_up = origin.is_up();
        origin.stop().await;
        let answer = if was_up {
            format!("{name} origin stopped (connections to {addr} are now refused)\n")
        } else {
            format!("{name} origin was already stopped (connections to {addr} are refused)\n")
        };
        return text(StatusCode::OK, answer);
    }

    let was_up = origin.is_up();
    match origin.resume().await {
        Ok(()) if was_up => text(
            StatusCode::OK,
            format!("{name} origin was already running on http://{addr}\n"),
        ),
        Ok(()) => text(
            StatusCode::OK,
            format!("{name} origin started (serving again on http://{addr})\n"),
        ),
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not restart {name} origin on {addr}: {err}\n"),
        ),
    }
}

fn status_text(primary: &SampleOrigin, backup: &SampleOrigin, base: &str) -> String {
    let line = |o: &SampleOrigin| {
        let state = if o.is_up() { "up" } else { "down" };
        format!("{:<8} http://{:<22} {state}\n", o.name(), o.addr())
    };
    let mut out = String::from("onair demo origins\n");
    out.push_str(&line(primary));
    out.push_str(&line(backup));
    out.push_str(&format!(
        "\ntry:  curl -X POST {base}/primary/stop\n      curl -X POST {base}/primary/start\n      (and /backup/stop, /backup/start)\n"
    ));
    out
}

fn not_found_text(path: &str) -> String {
    format!(
        "no such control endpoint: {path}\n\
         try GET /, or POST /primary/stop, /primary/start, /backup/stop, /backup/start\n"
    )
}

fn not_allowed(allow: &'static str) -> Response<Bytes> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: String) -> Response<Bytes> {
    let mut resp = Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Answers describe live state; never let anything cache them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[cfg(test)]
// Panicking on a broken fixture is the point of a test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: demo\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    #[tokio::test]
    async fn stops_and_starts_origins() {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let primary = SampleOrigin::start("primary", any).await.unwrap();
        let backup = SampleOrigin::start("backup", any).await.unwrap();
        let listener = TcpListener::bind(any).await.unwrap();
        let control = listener.local_addr().unwrap();
        let server = tokio::spawn(serve_control(listener, primary.clone(), backup.clone()));

        let answer = request(control, "POST", "/primary/stop").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("primary origin stopped"), "{answer}");
        assert!(!primary.is_up());
        assert!(TcpStream::connect(primary.addr()).await.is_err());

        let status = request(control, "GET", "/").await;
        assert!(status.contains("down"), "{status}");
        assert!(status.contains(&backup.addr().to_string()), "{status}");

        let answer = request(control, "POST", "/primary/start/").await;
        assert!(answer.contains("primary origin started"), "{answer}");
        assert!(primary.is_up());
        assert!(TcpStream::connect(primary.addr()).await.is_ok());

        let answer = request(control, "GET", "/backup/stop").await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("allow: post"),
            "{answer}"
        );
        assert!(backup.is_up());

        let answer = request(control, "POST", "/nope").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        let answer = request(control, "DELETE", "/").await;
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

        server.abort();
    }
}
