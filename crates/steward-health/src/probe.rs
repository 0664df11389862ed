//! Probes: the I/O edge of health checking. Each probe observes its target and
//! returns what it saw; judging the observation is pure (see [`crate::judge`]).
//!
//! Every probe runs under the check's timeout and reads bounded amounts of data,
//! so a hung, slow or hostile target costs only its own budget.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_health_endpoint::HealthResponse;
use steward_spec::{Check, Observed, Probe, Resolver};
use tokio::io::AsyncReadExt;

use crate::tls;

/// What one probe run saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Values for conditions.
    pub observed: Observed,
    /// Set when the probe could not complete (connection refused, timeout, ...).
    pub error: Option<String>,
    /// The target's own health document, when it answered `application/health+json`.
    pub health: Option<HealthResponse>,
    /// Context shown when a condition fails (e.g. a command's stderr).
    pub detail: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

type TlsKey = (Option<PathBuf>, bool);

/// Runs probes; holds what is costly to build (TLS configurations with their
/// trust roots) so it is shared between runs.
#[derive(Clone)]
pub struct Prober {
    tls: Arc<Mutex<HashMap<TlsKey, Arc<rustls::ClientConfig>>>>,
    resolver: Arc<dyn Resolver>,
}

impl Prober {
    /// A prober that resolves secret references with `resolver`.
    pub fn new(resolver: Arc<dyn Resolver>) -> Self {
        Self {
            tls: Arc::default(),
            resolver,
        }
    }

    fn tls_config(
        &self,
        ca_file: Option<&std::path::Path>,
        insecure: bool,
    ) -> Result<Arc<rustls::ClientConfig>, String> {
        let key = (ca_file.map(|p| p.to_path_buf()), insecure);
        let mut cache = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let cfg =
            Arc::new(steward_net::client_config(ca_file, insecure).map_err(|e| e.to_string())?);
        cache.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Runs the check's probe once, within its timeout.
    pub async fn run(&self, check: &Check) -> Outcome {
        let started = Instant::now();
        let timeout = check.timeout.0;
        let mut out = Outcome::default();
        let result = tokio::time::timeout(timeout, self.dispatch(check, &mut out, started)).await;
        out.elapsed = started.elapsed();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => out.error = Some(e),
            Err(_) => out.error = Some(format!("timed out after {}", check.timeout)),
        }
        if out.observed.response_time_ms.is_none() {
            out.observed.response_time_ms = Some(out.elapsed.as_secs_f64() * 1000.0);
        }
        out
    }

    async fn dispatch(
        &self,
        check: &Check,
        out: &mut Outcome,
        started: Instant,
    ) -> Result<(), String> {
        let r = self.resolver.as_ref();
        match &check.probe {
            Probe::Http(p) => {
                let tls = if p.url.as_written().starts_with("http://") {
                    None
                } else {
                    Some(self.tls_config(p.ca_file.as_deref(), p.insecure_skip_verify)?)
                };
                crate::http::probe(p, tls, r, out, started).await
            }
            Probe::Tcp { address } => {
                let s = tcp_connect(address).await?;
                out.observed.connected = true;
                out.observed.ip = s.peer_addr().ok().map(|a| a.ip().to_string());
                out.observed.response_time_ms = Some(ms(started));
                Ok(())
            }
            Probe::Tls {
                address,
                server_name,
                ca_file,
                insecure_skip_verify,
            } => {
                let cfg = self.tls_config(ca_file.as_deref(), *insecure_skip_verify)?;
                let s = tcp_connect(address).await?;
                out.observed.ip = s.peer_addr().ok().map(|a| a.ip().to_string());
                let host = server_name.clone().unwrap_or_else(|| {
                    address
                        .rsplit_once(':')
                        .map(|(h, _)| h)
                        .unwrap_or(address)
                        .trim_matches(['[', ']'])
                        .to_string()
                });
                tls::handshake(cfg, &host, s, &mut out.observed).await?;
                out.observed.response_time_ms = Some(ms(started));
                Ok(())
            }
            Probe::Dns {
                name,
                record_type,
                resolver,
            } => crate::dns::lookup(name, record_type, *resolver, &mut out.observed).await,
            Probe::Exec {
                command,
                env,
                cwd,
                max_output,
            } => {
                let mut cmd = tokio::process::Command::new(&command[0]);
                cmd.args(&command[1..])
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                for (k, v) in env {
                    cmd.env(k, v.resolve(r).map_err(|e| e.to_string())?.expose());
                }
                if let Some(d) = cwd {
                    cmd.current_dir(d);
                }
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("cannot start `{}`: {e}", command[0]))?;
                let stdout = child.stdout.take().expect("piped");
                let stderr = child.stderr.take().expect("piped");
                let (out_bytes, err_bytes, status) = tokio::join!(
                    read_capped(stdout, *max_output),
                    read_capped(stderr, 4096),
                    child.wait()
                );
                let status = status.map_err(|e| format!("waiting for `{}`: {e}", command[0]))?;
                out.observed.exit_code = status.code();
                out.observed.body = Some(String::from_utf8_lossy(&out_bytes.0).into_owned());
                out.observed.response_time_ms = Some(ms(started));
                if out_bytes.1 {
                    return Err(format!("output exceeds {max_output} bytes"));
                }
                if !status.success() {
                    let tail = String::from_utf8_lossy(&err_bytes.0);
                    let tail = tail.trim();
                    out.detail = Some(match status.code() {
                        Some(c) if tail.is_empty() => format!("exited with status {c}"),
                        Some(c) => format!("exited with status {c}: {}", last_line(tail)),
                        None => "killed by a signal".to_string(),
                    });
                }
                Ok(())
            }
            Probe::Postgres { url, query, expect } => {
                let url = url.resolve(r).map_err(|e| e.to_string())?;
                let (client, conn) = tokio_postgres::connect(url.expose(), tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("cannot connect: {}", pg_error(&e)))?;
                let task = tokio::spawn(conn);
                out.observed.connected = true;
                let rows = client
                    .simple_query(query)
                    .await
                    .map_err(|e| format!("query failed: {}", pg_error(&e)));
                drop(client);
                task.abort();
                let value = rows?.into_iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some(row.get(0).map(str::to_string))
                    }
                    _ => None,
                });
                out.observed.response_time_ms = Some(ms(started));
                out.observed.value = value.clone().flatten();
                if let Some(want) = expect {
                    let got = value.flatten();
                    if got.as_deref() != Some(want.as_str()) {
                        return Err(format!(
                            "query returned {}, expected {want}",
                            got.map(|g| format!("`{g}`"))
                                .unwrap_or_else(|| "no value".into())
                        ));
                    }
                }
                Ok(())
            }
            Probe::Redis { url, key } => {
                let url = url.resolve(r).map_err(|e| e.to_string())?;
                let client = redis::Client::open(url.expose())
                    .map_err(|e| format!("bad redis URL: {}", redis_error(&e)))?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("cannot connect: {}", redis_error(&e)))?;
                out.observed.connected = true;
                let pong: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| format!("PING failed: {}", redis_error(&e)))?;
                if pong != "PONG" {
                    return Err(format!("PING answered `{pong}`"));
                }
                if let Some(k) = key {
                    let v: Option<String> =
                        redis::cmd("GET")
                            .arg(k)
                            .query_async(&mut conn)
                            .await
                            .map_err(|e| format!("GET {k} failed: {}", redis_error(&e)))?;
                    out.observed.value = v;
                }
                out.observed.response_time_ms = Some(ms(started));
                Ok(())
            }
            Probe::Amqp { url, queue } => {
                use amqprs::channel::QueueDeclareArguments;
                use amqprs::connection::Connection;
                let url = url.resolve(r).map_err(|e| e.to_string())?;
                let args = amqp_arguments(url.expose())?;
                let conn = Connection::open(&args)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                out.observed.connected = true;
                let result = async {
                    if let Some(q) = queue {
                        let ch = conn
                            .open_channel(None)
                            .await
                            .map_err(|e| format!("cannot open channel: {e}"))?;
                        let declared = ch
                            .queue_declare(QueueDeclareArguments::new(q).passive(true).finish())
                            .await
                            .map_err(|e| {
                                format!("queue `{q}` is missing or not accessible ({e})")
                            })?;
                        if let Some((_, messages, consumers)) = declared {
                            out.observed.messages = Some(u64::from(messages));
                            out.observed.consumers = Some(u64::from(consumers));
                        }
                        let _ = ch.close().await;
                    }
                    Ok::<(), String>(())
                }
                .await;
                let _ = conn.close().await;
                out.observed.response_time_ms = Some(ms(started));
                result
            }
        }
    }
}

/// Connection arguments from an AMQP URI (rabbitmq.com/uri-spec): unlike
/// amqprs's own parser this percent-decodes the vhost, so `%2f` means `/`.
fn amqp_arguments(uri: &str) -> Result<amqprs::connection::OpenConnectionArguments, String> {
    let u = url::Url::parse(uri).map_err(|e| format!("bad AMQP URL: {e}"))?;
    match u.scheme() {
        "amqp" => {}
        "amqps" => return Err("amqps:// (TLS) is not supported by the amqp check yet".into()),
        other => return Err(format!("bad AMQP URL scheme `{other}`")),
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let host = u.host_str().ok_or("AMQP URL has no host")?;
    let user = if u.username().is_empty() {
        "guest".to_string()
    } else {
        decode(u.username())
    };
    let pass = u.password().map(decode).unwrap_or_else(|| "guest".into());
    let vhost = match u.path() {
        "" | "/" => "/".to_string(),
        p => decode(&p[1..]),
    };
    let mut args = amqprs::connection::OpenConnectionArguments::new(
        host,
        u.port().unwrap_or(5672),
        &user,
        &pass,
    );
    args.virtual_host(&vhost);
    Ok(args.finish())
}

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

fn last_line(s: &str) -> &str {
    let l = s.lines().last().unwrap_or(s);
    match l.char_indices().nth(200) {
        Some((i, _)) => &l[..i],
        None => l,
    }
}

async fn tcp_connect(address: &str) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {e}"))
}

/// Reads at most `cap` bytes, then drains the rest so the writer never blocks.
async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R, cap: u64) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut over = false;
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if (buf.len() + n) as u64 > cap {
                    over = true;
                    let room = cap as usize - buf.len().min(cap as usize);
                    buf.extend_from_slice(&chunk[..room]);
                } else if !over {
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
    (buf, over)
}

pub use steward_net::error_chain;

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => error_chain(e),
    }
}

fn redis_error(e: &redis::RedisError) -> String {
    // RedisError's Display may include the URL's host but never the password.
    e.to_string()
}
