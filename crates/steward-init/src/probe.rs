//! What a listening port speaks, told by its protocol's greeting — never by
//! the port number alone: PostgreSQL answers an SSLRequest with one byte,
//! MySQL and MariaDB greet first with a handshake packet, Redis answers
//! `PING`, RabbitMQ answers AMQP's protocol header with `Connection.Start`,
//! and an HTTP server answers a request. Each probe uses its own connection,
//! sends only what its protocol's own clients send first, and gives up
//! after `TIMEOUT`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one probe may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server that greets first (MySQL) is given to do so.
const GREETING: Duration = Duration::from_millis(300);

/// The protocol a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PostgreSQL's wire protocol.
    Postgres,
    /// MySQL's (or MariaDB's) client/server protocol.
    Mysql,
    /// Redis's RESP.
    Redis,
    /// AMQP 0-9-1 (RabbitMQ).
    Amqp,
    /// HTTP/1.
    Http,
    /// None of these.
    Unknown,
}

/// What a probe learnt about a port.
#[derive(Debug, Clone, Serialize)]
pub struct Identified {
    /// The protocol.
    pub protocol: Protocol,
    /// The server's own name and version, when its greeting says
    /// (`10.11.6-MariaDB`, `RabbitMQ 3.10.8`).
    pub server: Option<String>,
    /// Redis: commands need a password first (`NOAUTH`).
    pub auth_required: bool,
    /// HTTP: the health and metrics paths that answered.
    pub endpoints: Vec<Endpoint>,
}

/// An HTTP path that answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Endpoint {
    /// The path, e.g. `/health`.
    pub path: String,
    /// The status it answered with.
    pub status: u16,
    /// What its body is.
    pub format: Format,
}

/// The kind of body an endpoint answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `application/health+json` (the IETF health check response draft).
    HealthJson,
    /// Other JSON.
    Json,
    /// Prometheus text format or OpenMetrics.
    Prometheus,
    /// Anything else.
    Other,
}

/// Paths tried on an HTTP port, health first.
pub const PATHS: [&str; 7] = [
    "/health",
    "/healthz",
    "/livez",
    "/readyz",
    "/actuator/health",
    "/metrics",
    "/",
];

/// Identifies the protocol on `addr`, trying `hint` (from the process's
/// name or the port) first.
pub async fn identify(addr: SocketAddr, hint: Option<Protocol>) -> Identified {
    let mut order = vec![
        Protocol::Mysql,
        Protocol::Http,
        Protocol::Postgres,
        Protocol::Redis,
        Protocol::Amqp,
    ];
    if let Some(h) = hint {
        order.retain(|p| *p != h);
        order.insert(0, h);
    }
    for protocol in order {
        if let Some(found) = try_protocol(addr, protocol).await {
            return found;
        }
    }
    Identified {
        protocol: Protocol::Unknown,
        server: None,
        auth_required: false,
        endpoints: Vec::new(),
    }
}

/// The protocol a well-known port or a server's program name suggests.
pub fn hint(process_name: &str, port: u16) -> Option<Protocol> {
    match process_name {
        "postgres" | "postmaster" => return Some(Protocol::Postgres),
        "mysqld" | "mariadbd" => return Some(Protocol::Mysql),
        "redis-server" | "valkey-server" => return Some(Protocol::Redis),
        "beam.smp" => return Some(Protocol::Amqp),
        _ => {}
    }
    match port {
        5432 => Some(Protocol::Postgres),
        3306 => Some(Protocol::Mysql),
        6379 => Some(Protocol::Redis),
        5672 => Some(Protocol::Amqp),
        80 | 8000 | 8080 | 3000 | 5000 => Some(Protocol::Http),
        _ => None,
    }
}

async fn try_protocol(addr: SocketAddr, protocol: Protocol) -> Option<Identified> {
    let found = |server: Option<String>, auth_required| Identified {
        protocol,
        server,
        auth_required,
        endpoints: Vec::new(),
    };
    match protocol {
        Protocol::Mysql => {
            let mut s = connect(addr).await?;
            let mut buf = vec![0u8; 256];
            let n = tokio::time::timeout(GREETING, s.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            mysql_greeting(&buf[..n]).map(|v| found(v, false))
        }
        Protocol::Postgres => {
            // SSLRequest: length 8, code 80877103.
            let reply = exchange(addr, &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], 1).await?;
            matches!(reply.first(), Some(b'S' | b'N')).then(|| found(None, false))
        }
        Protocol::Redis => {
            let reply = exchange(addr, b"PING\r\n", 1).await?;
            redis_reply(&reply).map(|auth| found(None, auth))
        }
        Protocol::Amqp => {
            let reply = exchange(addr, b"AMQP\x00\x00\x09\x01", 11).await?;
            amqp_start(&reply).map(|product| found(product, false))
        }
        Protocol::Http => http(addr).await,
        Protocol::Unknown => None,
    }
}

async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .ok()?
        .ok()
}

/// Sends `hello` and reads what comes back (at least `min` bytes, or what
/// arrived before the server closed or the timeout).
async fn exchange(addr: SocketAddr, hello: &[u8], min: usize) -> Option<Vec<u8>> {
    let mut s = connect(addr).await?;
    let work = async {
        s.write_all(hello).await.ok()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        while out.len() < 4096 {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() >= min && (out.ends_with(b"\n") || out.ends_with(&[0xce]) || min == 1) {
                break;
            }
        }
        Some(out)
    };
    let out = tokio::time::timeout(TIMEOUT, work).await.ok()??;
    (out.len() >= min).then_some(out)
}

/// A MySQL handshake packet (protocol 10, its server version after it) or
/// the error packet a server sends a host it refuses: `Some(version)`.
pub fn mysql_greeting(b: &[u8]) -> Option<Option<String>> {
    if b.len() < 5 || b[3] != 0 {
        return None;
    }
    let len = usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16;
    let payload = &b[4..];
    if len == 0 || len > 0xffff {
        return None;
    }
    match payload[0] {
        10 => {
            let end = payload[1..].iter().position(|&c| c == 0)?;
            let version = std::str::from_utf8(&payload[1..1 + end]).ok()?;
            (!version.is_empty() && version.is_ascii()).then(|| Some(version.to_string()))
        }
        0xff if payload.len() >= 3 => Some(None),
        _ => None,
    }
}

/// Redis's answer to `PING`: `Some(false)` for `+PONG`, `Some(true)` when
/// it wants a password first.
pub fn redis_reply(b: &[u8]) -> Option<bool> {
    let line = std::str::from_utf8(b).ok()?.lines().next()?;
    if line == "+PONG" {
        Some(false)
    } else if line.starts_with("-NOAUTH") || line.starts_with("-DENIED") {
        Some(true)
    } else {
        None
    }
}

/// AMQP 0-9-1 `Connection.Start` (a method frame on channel 0, class 10,
/// method 10): `Some(product)` with the server's product and version from
/// its properties when they are there.
pub fn amqp_start(b: &[u8]) -> Option<Option<String>> {
    if b.len() < 11 || b[0] != 1 || b[1] != 0 || b[2] != 0 || b[7..11] != [0, 10, 0, 10] {
        return None;
    }
    let field = |name: &str| {
        let key = [name.as_bytes(), b"S"].concat();
        let at = b.windows(key.len()).position(|w| w == key.as_slice())? + key.len();
        let len = u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        b.get(at + 4..at + 4 + len)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    let product = match (field("product"), field("version")) {
        (Some(p), Some(v)) => Some(format!("{p} {v}")),
        (p, _) => p,
    };
    Some(product)
}

async fn http(addr: SocketAddr) -> Option<Identified> {
    let client = steward_net::http(steward_net::HttpOptions {
        timeout: Some(TIMEOUT),
        connect_timeout: Some(TIMEOUT),
        no_proxy: true,
    })
    .ok()?;
    let mut endpoints = Vec::new();
    let mut speaks_http = false;
    for path in PATHS {
        let Ok(resp) = client
            .get(format!("http://{addr}{path}"))
            .header(
                "accept",
                "application/health+json, application/json;q=0.9, text/plain;q=0.5, */*;q=0.1",
            )
            .send()
            .await
        else {
            if !speaks_http {
                return None;
            }
            continue;
        };
        speaks_http = true;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let body = resp.text().await.unwrap_or_default();
        let format = format(&content_type, &body);
        let health = path != "/metrics" && path != "/";
        let found = match status {
            200..=299 => !health || format != Format::Other || body.len() < 256,
            // A failing health endpoint answers 503 with its report.
            503 => health && matches!(format, Format::HealthJson | Format::Json),
            _ => false,
        };
        let found = found && (path != "/metrics" || format == Format::Prometheus);
        if found {
            endpoints.push(Endpoint {
                path: path.to_string(),
                status,
                format,
            });
        }
    }
    Some(Identified {
        protocol: Protocol::Http,
        server: None,
        auth_required: false,
        endpoints,
    })
}

/// What a body is, from its `Content-Type` and, when that is vague, itself.
pub fn format(content_type: &str, body: &str) -> Format {
    if content_type.starts_with("application/health+json") {
        Format::HealthJson
    } else if content_type.starts_with("application/openmetrics-text")
        || (content_type.starts_with("text/plain")
            && body
                .lines()
                .any(|l| l.starts_with("# TYPE ") || l.starts_with("# HELP ")))
    {
        Format::Prometheus
    } else if content_type.contains("json") {
        Format::Json
    } else {
        Format::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_are_recognised_and_other_bytes_are_not() {
        // A MariaDB 10.11 handshake's first bytes (protocol 10, version, NUL).
        let mut mariadb = vec![0x5b, 0, 0, 0, 10];
        mariadb.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        mariadb.extend_from_slice(&[8, 0, 0, 0]);
        assert_eq!(
            mysql_greeting(&mariadb),
            Some(Some("5.5.5-10.11.6-MariaDB-0+deb12u1".into()))
        );
        // ER_HOST_NOT_PRIVILEGED (1130) sent before any handshake.
        let refused = [0x19, 0, 0, 0, 0xff, 0x6a, 0x04, b'H', b'o', b's', b't'];
        assert_eq!(mysql_greeting(&refused), Some(None));
        assert_eq!(mysql_greeting(b"SSH-2.0-OpenSSH_9.2p1\r\n"), None);
        assert_eq!(mysql_greeting(b"220 mail ESMTP\r\n"), None);

        assert_eq!(redis_reply(b"+PONG\r\n"), Some(false));
        assert_eq!(
            redis_reply(b"-NOAUTH Authentication required.\r\n"),
            Some(true)
        );
        assert_eq!(redis_reply(b"HTTP/1.1 400 Bad Request\r\n"), None);

        let mut start = vec![1, 0, 0, 0, 0, 1, 0, 0, 10, 0, 10, 0, 9];
        start.extend_from_slice(
            b"\0\0\0\x20\x07productS\0\0\0\x08RabbitMQ\x07versionS\0\0\0\x063.10.8",
        );
        assert_eq!(amqp_start(&start), Some(Some("RabbitMQ 3.10.8".into())));
        // A server that answers the header with its own protocol header.
        assert_eq!(amqp_start(b"AMQP\x00\x00\x09\x01\0\0\0"), None);
    }

    #[test]
    fn bodies_are_told_apart() {
        assert_eq!(format("application/health+json", "{}"), Format::HealthJson);
        assert_eq!(
            format(
                "text/plain; version=0.0.4",
                "# HELP up x\n# TYPE up gauge\nup 1\n"
            ),
            Format::Prometheus
        );
        assert_eq!(
            format("application/openmetrics-text; version=1.0.0", ""),
            Format::Prometheus
        );
        assert_eq!(format("text/plain", "ok"), Format::Other);
        assert_eq!(
            format("application/json", "{\"status\":\"UP\"}"),
            Format::Json
        );
    }

    #[test]
    fn hints_come_from_the_program_before_the_port() {
        assert_eq!(hint("postgres", 41973), Some(Protocol::Postgres));
        assert_eq!(hint("beam.smp", 1), Some(Protocol::Amqp));
        assert_eq!(hint("myapp", 6379), Some(Protocol::Redis));
        assert_eq!(hint("myapp", 41000), None);
    }
}
