//! The access log: one JSON object per request, written off the request path.
//!
//! Lines go through a non-blocking writer (a bounded channel drained by its own thread) so a
//! slow disk never stalls a request; when the channel is full, lines are dropped rather than
//! making readers wait. The destination is fixed at startup.

use std::io::Write;
use std::sync::OnceLock;

use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};

use crate::config::AccessLog;

static WRITER: OnceLock<NonBlocking> = OnceLock::new();

/// One access-log line.
#[derive(Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client_ip: Option<String>,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub duration_ms: f64,
    pub site: &'a str,
    pub origin: Option<&'a str>,
    pub attempts: usize,
    pub cache: &'a str,
    /// The HTTP version the client spoke: "1.0", "1.1" or "2" (over TLS, what ALPN agreed).
    pub http: &'static str,
    /// The TLS version of an HTTPS request, absent for plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The protocol ALPN agreed on an HTTPS connection ("h2" or "http/1.1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpn: Option<&'static str>,
    /// Why the request failed (also set when the status was already sent and the body was
    /// cut short), absent on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release whose embargo kept the content back (answered with the embargo answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embargo: Option<&'a str>,
    /// A warm fetch (a node fetching a release's content ahead of its time, past the
    /// embargo), not a reader.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warm: bool,
}

/// Opens the access log; keep the returned guard alive for the life of the process (dropping
/// it flushes). Returns None when the log is off.
pub fn init(dest: &AccessLog) -> std::io::Result<Option<WorkerGuard>> {
    let (writer, guard) = match dest {
        AccessLog::Off => return Ok(None),
        AccessLog::Stdout => tracing_appender::non_blocking(std::io::stdout()),
        AccessLog::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            tracing_appender::non_blocking(file)
        }
    };
    // A second init (tests start several servers in one process) keeps the first writer.
    let _ = WRITER.set(writer);
    Ok(Some(guard))
}

/// Whether access logging is on; lets the proxy skip building entries nobody reads.
pub fn enabled() -> bool {
    WRITER.get().is_some()
}

/// Writes one entry, if the log is on.
pub fn write(entry: &Entry<'_>) {
    let Some(writer) = WRITER.get() else { return };
    let mut line = match serde_json::to_vec(entry) {
        Ok(line) => line,
        Err(_) => return,
    };
    line.push(b'\n');
    let mut writer = writer.clone();
    let _ = writer.write_all(&line);
}

/// RFC 3339 UTC time with milliseconds, without pulling in a date crate.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's civil-from-days algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(now_rfc3339().len(), 24);
    }
}
