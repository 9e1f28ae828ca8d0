//! A delaying TCP relay: a simulated network link for benchmarks and tests on one machine.
//!
//! The kernel's `netem` qdisc is not available here, so a link of `delay` one-way is played by
//! a relay between two loopback addresses: every chunk read on one side is written on the other
//! `delay` after it arrived, in order, in both directions. The relay reads on while chunks wait,
//! so it delays without limiting throughput (as a long link does, not a slow one).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub struct Relay {
    /// Where to connect to reach `to` through the link.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// A link of `delay` one-way from a new listener on `ip` to `to`.
    pub async fn start(ip: [u8; 4], to: SocketAddr, delay: Duration) -> Relay {
        let listener = TcpListener::bind((std::net::Ipv4Addr::from(ip), 0))
            .await
            .unwrap();
        Relay::on(listener, to, delay)
    }

    /// [`Relay::start`] on a listener the caller bound (to know the address before `to` exists).
    pub fn on(listener: TcpListener, to: SocketAddr, delay: Duration) -> Relay {
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // The far side not (yet) listening: the link drops the connection, as a
                    // refused connection would.
                    let Ok(server) = TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(one_way(client_read, server_write, delay));
                    tokio::spawn(one_way(server_read, client_write, delay));
                });
            }
        });
        Relay { addr, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, every chunk `delay` after it was read; closes `to` when `from` ends.
async fn one_way(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
