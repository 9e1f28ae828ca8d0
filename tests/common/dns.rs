//! A tiny authoritative DNS server on 127.0.0.1 for tests: it answers A queries from a table
//! the test changes as it goes (names, addresses, TTL), and can be stopped to play a DNS
//! outage. Enough of RFC 1035 for a resolver asking one question per message.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Zone {
    records: Mutex<HashMap<String, (Vec<Ipv4Addr>, u32)>>,
    queries: AtomicUsize,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Zone::default());
        let task = tokio::spawn(serve(socket, zone.clone()));
        DnsServer {
            addr,
            zone,
            task: Mutex::new(Some(task)),
        }
    }

    /// `name` (no trailing dot) now resolves to `addrs`, valid for `ttl` seconds.
    pub fn set(&self, name: &str, addrs: &[[u8; 4]], ttl: u32) {
        let addrs = addrs.iter().map(|a| Ipv4Addr::from(*a)).collect();
        self.zone
            .records
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), (addrs, ttl));
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.zone.queries.load(Ordering::SeqCst)
    }

    /// Stops answering (the socket closes: queries get nothing back).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(answer) = answer(&buf[..n], &zone) {
            zone.queries.fetch_add(1, Ordering::SeqCst);
            let _ = socket.send_to(&answer, peer).await;
        }
    }
}

/// The response to one query message, or None for something that is not one.
fn answer(query: &[u8], zone: &Zone) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    // The question: labels, then QTYPE and QCLASS.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question = &query[12..at + 4];
    let name = labels.join(".");
    let record = zone.records.lock().unwrap().get(&name).cloned();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]);
    // QR, opcode 0, AA, RD copied, RA; RCODE 3 (NXDOMAIN) for unknown names.
    let rd = query[2] & 0x01;
    out.push(0x84 | rd);
    out.push(if record.is_some() { 0x80 } else { 0x83 });
    let answers: Vec<Ipv4Addr> = match (&record, qtype) {
        (Some((addrs, _)), 1) => addrs.clone(),
        _ => Vec::new(),
    };
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(question);
    let ttl = record.as_ref().map_or(0, |(_, ttl)| *ttl);
    for ip in answers {
        // A pointer to the question's name, type A, class IN, the TTL, four bytes of address.
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
