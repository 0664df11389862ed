//! Probes against real servers: targets built here (plain, slow, hostile, TLS with
//! self-signed and expired certificates) and the test bed's nginx, PostgreSQL, Redis,
//! RabbitMQ and dnsmasq (`scripts/testbed up`; `scripts/test` does it for you).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use steward_health::{Judgement, Prober, judge, run_once};
use steward_spec::{Check, OsResolver, Spec};
use steward_state::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn testbed(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    })
}

/// Builds one check from a TOML body, through the public spec parser.
fn check(body: &str) -> Check {
    let src = format!("[check.t]\n{body}\n");
    match Spec::parse("test.toml", &src, Path::new("/"), &OsResolver) {
        Ok(mut s) => Arc::unwrap_or_clone(s.checks.remove("t").unwrap()),
        Err(e) => panic!("{e:?}"),
    }
}

async fn probe(c: &Check) -> Judgement {
    let p = Prober::new(Arc::new(OsResolver));
    let out = p.run(c).await;
    judge(c, &out)
}

fn assert_fail(j: &Judgement, needle: &str) {
    assert_eq!(j.status, Status::Fail, "{j:?}");
    let e = j.error.as_deref().unwrap_or("");
    assert!(
        e.contains(needle),
        "error `{e}` does not mention `{needle}`"
    );
}

/// A one-shot HTTP server answering every connection with `respond`.
async fn serve<F, Fut>(respond: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let respond = Arc::new(respond);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let r = respond.clone();
            tokio::spawn(async move { r(s).await });
        }
    });
    addr
}

async fn read_request(s: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn respond_with(
    status: &'static str,
    ctype: &'static str,
    body: &'static str,
) -> impl Fn(tokio::net::TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
+ Send
+ Sync {
    move |mut s| {
        Box::pin(async move {
            read_request(&mut s).await;
            let r = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(r.as_bytes()).await;
        })
    }
}

#[tokio::test]
async fn http_conditions_against_nginx() {
    let base = testbed("STEWARD_TEST_NGINX_URL");
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"{base}/health\"\nconditions = [\"[STATUS] == 200\", \"[BODY].checks.disk:utilization[0].observedValue < 50\", \"[RESPONSE_TIME] < 5000\"]"
    )))
    .await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    assert_eq!(
        j.observed["health"], "pass",
        "nginx serves application/health+json"
    );
    assert_eq!(j.observed["status"], 200);
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"{base}/missing\"\nconditions = [\"[STATUS] == 200\"]"
    )))
    .await;
    assert_fail(&j, "[STATUS] (404) == 200");
}

#[tokio::test]
async fn health_json_documents_map_to_pass_warn_fail() {
    let warn = serve(respond_with(
        "200 OK",
        "application/health+json",
        r#"{"status":"warn","checks":{"db:connections":[{"status":"warn","output":"pool 90% used"}]}}"#,
    ))
    .await;
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"http://{warn}/health\""
    )))
    .await;
    assert_eq!(j.status, Status::Warn, "{j:?}");
    assert!(j.error.unwrap().contains("db:connections: pool 90% used"));
    assert_eq!(j.observed["components"]["db:connections"], "warn");

    let fail = serve(respond_with(
        "503 Service Unavailable",
        "application/health+json",
        r#"{"status":"fail","output":"db down"}"#,
    ))
    .await;
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"http://{fail}/health\"\nconditions = [\"[STATUS] < 600\"]"
    )))
    .await;
    assert_fail(&j, "target reports fail");

    let broken = serve(respond_with(
        "200 OK",
        "application/health+json",
        "{not json",
    ))
    .await;
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"http://{broken}/health\""
    )))
    .await;
    assert_fail(&j, "invalid application/health+json");
}

#[tokio::test]
async fn hostile_targets_cost_only_their_own_timeout() {
    // Accepts, reads, never answers.
    let silent = serve(|mut s| async move {
        read_request(&mut s).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;
    // Sends headers, then one byte every 50 ms, forever.
    let trickle = serve(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
            .await;
        for _ in 0..1200 {
            if s.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // 100 MB as fast as it can.
    let huge = serve(|mut s| async move {
        read_request(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
            .await;
        let chunk = vec![b'a'; 65536];
        for _ in 0..1600 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    // Not HTTP at all.
    let garbage = serve(|mut s| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"\x00\xff\x13garbage\r\n\r\n\x01\x02").await;
    })
    .await;
    let fast = serve(respond_with("200 OK", "text/plain", "ok")).await;

    let checks: Vec<Arc<Check>> = [
        ("silent", silent, "300ms"),
        ("trickle", trickle, "300ms"),
        ("huge", huge, "5s"),
        ("garbage", garbage, "2s"),
        ("fast", fast, "5s"),
    ]
    .iter()
    .map(|(n, a, t)| {
        let mut c = check(&format!("type = \"http\"\nurl = \"http://{a}/\"\ntimeout = \"{t}\"\nconditions = [\"[STATUS] == 200\"]"));
        c.name = n.to_string();
        Arc::new(c)
    })
    .collect();
    let results = run_once(&checks, &Prober::new(Arc::new(OsResolver))).await;
    let by: std::collections::HashMap<_, _> = results.into_iter().map(|(n, j, _)| (n, j)).collect();
    assert_fail(&by["silent"], "timed out after 300ms");
    assert_fail(&by["trickle"], "timed out after 300ms");
    assert_fail(&by["huge"], "exceeds the 1048576 byte limit");
    assert_eq!(by["garbage"].status, Status::Fail);
    assert_eq!(
        by["fast"].status,
        Status::Pass,
        "a healthy target is unaffected by hostile neighbours"
    );
}

struct Tls {
    cert_pem: String,
    addr: SocketAddr,
}

/// An HTTPS server with a self-signed certificate for `localhost`, valid until `not_after`.
async fn tls_server(not_after: (i32, u8, u8)) -> Tls {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let mut buf = [0u8; 2048];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    Tls {
        cert_pem: cert.pem(),
        addr,
    }
}

#[tokio::test]
async fn tls_verification_and_certificate_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let good = tls_server((2099, 1, 1)).await;
    let expired = tls_server((2021, 1, 1)).await;
    let ca = dir.path().join("good.pem");
    std::fs::File::create(&ca)
        .unwrap()
        .write_all(good.cert_pem.as_bytes())
        .unwrap();
    let expired_ca = dir.path().join("expired.pem");
    std::fs::write(&expired_ca, &expired.cert_pem).unwrap();
    let port = |t: &Tls| t.addr.port();

    // Unknown issuer: refused by default.
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"https://localhost:{}/\"",
        port(&good)
    )))
    .await;
    assert_fail(&j, "certificate");
    // Trusted through ca_file, and its expiry is observed.
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"https://localhost:{}/\"\nca_file = \"{}\"\nconditions = [\"[STATUS] == 200\", \"[CERTIFICATE_EXPIRATION] > 48h\"]",
        port(&good),
        ca.display()
    )))
    .await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    assert!(j.observed["certificate_expires_in_s"].as_i64().unwrap() > 86400 * 365);
    // Expired: verification fails even with the CA trusted...
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"https://localhost:{}/\"\nca_file = \"{}\"",
        port(&expired),
        expired_ca.display()
    )))
    .await;
    assert_fail(&j, "xpired");
    // ...and without verification the expiry condition still catches it.
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"https://localhost:{}/\"\ninsecure_skip_verify = true\nconditions = [\"[STATUS] == 200\", \"[CERTIFICATE_EXPIRATION] > 48h\"]",
        port(&expired)
    )))
    .await;
    assert_fail(&j, "[CERTIFICATE_EXPIRATION]");
    assert!(j.observed["certificate_expires_in_s"].as_i64().unwrap() < 0);
    // The tls check type: handshake plus expiry.
    let j = probe(&check(&format!(
        "type = \"tls\"\naddress = \"localhost:{}\"\nca_file = \"{}\"\nconditions = [\"[CERTIFICATE_EXPIRATION] > 30d\"]",
        port(&good),
        ca.display()
    )))
    .await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let j = probe(&check(&format!(
        "type = \"tls\"\naddress = \"localhost:{}\"",
        port(&good)
    )))
    .await;
    assert_fail(&j, "TLS handshake failed");
}

#[tokio::test]
async fn tcp_and_dns() {
    let nginx = testbed("STEWARD_TEST_NGINX_URL");
    let addr = nginx.trim_start_matches("http://");
    let j = probe(&check(&format!("type = \"tcp\"\naddress = \"{addr}\""))).await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let j = probe(&check(&format!("type = \"tcp\"\naddress = \"{closed}\""))).await;
    assert_fail(&j, "cannot connect");

    let dns = testbed("STEWARD_TEST_DNS");
    let j = probe(&check(&format!(
        "type = \"dns\"\nname = \"ok.steward.test\"\nresolver = \"{dns}\"\nconditions = [\"[IP] == 127.0.0.42\", \"[DNS_RCODE] == NOERROR\"]"
    )))
    .await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let j = probe(&check(&format!(
        "type = \"dns\"\nname = \"gone.steward.test\"\nresolver = \"{dns}\""
    )))
    .await;
    assert_fail(&j, "[DNS_RCODE] (NXDOMAIN) == NOERROR");
}

#[tokio::test]
async fn exec_exit_codes_output_and_timeouts() {
    let j = probe(&check("type = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo 42\"]\nconditions = [\"[EXIT_CODE] == 0\", \"[BODY] == 42\"]")).await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let j = probe(&check(
        "type = \"exec\"\ncommand = [\"sh\", \"-c\", \"echo broken >&2; exit 3\"]",
    ))
    .await;
    assert_fail(&j, "[EXIT_CODE] (3) == 0 (exited with status 3: broken)");
    let j = probe(&check(
        "type = \"exec\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"300ms\"",
    ))
    .await;
    assert_fail(&j, "timed out after 300ms");
    let j = probe(&check(
        "type = \"exec\"\ncommand = [\"/nonexistent/steward-probe\"]",
    ))
    .await;
    assert_fail(&j, "cannot start");
    let j = probe(&check(
        "type = \"exec\"\ncommand = [\"sh\", \"-c\", \"head -c 3000000 /dev/zero\"]",
    ))
    .await;
    assert_fail(&j, "output exceeds");
}

#[tokio::test]
async fn postgres_query_expectations_and_bad_credentials() {
    let url = testbed("STEWARD_TEST_PG_URL");
    let j = probe(&check(&format!(
        "type = \"postgres\"\nurl = \"{url}\"\nquery = \"SELECT 6 * 7\"\nexpect = \"42\""
    )))
    .await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    assert_eq!(j.observed["value"], "42");
    let j = probe(&check(&format!(
        "type = \"postgres\"\nurl = \"{url}\"\nquery = \"SELECT 1\"\nexpect = \"2\""
    )))
    .await;
    assert_fail(&j, "query returned `1`, expected 2");
    let j = probe(&check(&format!(
        "type = \"postgres\"\nurl = \"{url}\"\nquery = \"SELECT * FROM no_such_table\""
    )))
    .await;
    assert_fail(&j, "does not exist");
    let wrong = url.replace("steward-test-pw", "wrong-password-123");
    let j = probe(&check(&format!("type = \"postgres\"\nurl = \"{wrong}\""))).await;
    assert_fail(&j, "password authentication failed");
    assert!(
        !j.error.unwrap().contains("wrong-password-123"),
        "the password must not leak into the error"
    );
}

#[tokio::test]
async fn redis_ping_and_key_values() {
    let url = testbed("STEWARD_TEST_REDIS_URL");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("steward-test-{}", std::process::id());
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("17")
        .query_async(&mut conn)
        .await
        .unwrap();
    let j = probe(&check(&format!("type = \"redis\"\nurl = \"{url}\"\nkey = \"{key}\"\nconditions = [\"[CONNECTED] == true\", \"[VALUE] < 20\"]"))).await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("25")
        .query_async(&mut conn)
        .await
        .unwrap();
    let j = probe(&check(&format!(
        "type = \"redis\"\nurl = \"{url}\"\nkey = \"{key}\"\nconditions = [\"[VALUE] < 20\"]"
    )))
    .await;
    assert_fail(&j, "[VALUE] (25) < 20");
}

/// A private redis-server on a free port, killed on drop.
struct OwnRedis {
    child: std::process::Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        OwnRedis { child, port }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until_status(c: &Check, want: Status) -> Judgement {
    for _ in 0..100 {
        let j = probe(c).await;
        if j.status == want {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never reached {want:?}", c.name);
}

#[tokio::test]
async fn redis_outage_and_recovery() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = OwnRedis::start(port);
    let c = check(&format!(
        "type = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\ntimeout = \"1s\"",
        server.port
    ));
    until_status(&c, Status::Pass).await;
    drop(server);
    let j = until_status(&c, Status::Fail).await;
    assert!(j.error.unwrap().contains("cannot connect"));
    let _again = OwnRedis::start(port);
    until_status(&c, Status::Pass).await;
}

/// RabbitMQ: queue depth and consumers, a missing queue, and the broker stopped
/// mid-run and started again. One test, because stopping the broker would
/// disturb any other AMQP test running in parallel.
#[tokio::test]
async fn amqp_queue_depth_and_broker_outage() {
    use amqprs::BasicProperties;
    use amqprs::channel::{BasicPublishArguments, QueueDeclareArguments, QueuePurgeArguments};
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let url = testbed("STEWARD_TEST_AMQP_URL");
    let port: u16 = url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let queue = format!("steward-test-{}", std::process::id());
    let conn = Connection::open(&OpenConnectionArguments::new(
        "127.0.0.1",
        port,
        "guest",
        "guest",
    ))
    .await
    .unwrap();
    let ch = conn.open_channel(None).await.unwrap();
    ch.queue_declare(QueueDeclareArguments::new(&queue))
        .await
        .unwrap();
    ch.queue_purge(QueuePurgeArguments::new(&queue))
        .await
        .unwrap();
    for i in 0..3 {
        ch.basic_publish(
            BasicProperties::default(),
            format!("job {i}").into_bytes(),
            BasicPublishArguments::new("", &queue),
        )
        .await
        .unwrap();
    }
    let c = check(&format!(
        "type = \"amqp\"\nurl = \"{url}\"\nqueue = \"{queue}\"\nconditions = [\"[CONNECTED] == true\", \"[MESSAGES] == 3\", \"[CONSUMERS] == 0\"]"
    ));
    let j = until_status(&c, Status::Pass).await;
    assert_eq!(j.observed["messages"], 3);
    let missing = check(&format!(
        "type = \"amqp\"\nurl = \"{url}\"\nqueue = \"{queue}-absent\""
    ));
    assert_fail(&probe(&missing).await, "is missing or not accessible");
    let _ = ch.close().await;
    let _ = conn.close().await;

    let node = testbed("STEWARD_TEST_AMQP_NODE");
    let ctl = |action: &str| {
        let st = std::process::Command::new("rabbitmqctl")
            .args(["-n", &node, action])
            .env("HOME", "/var/lib/rabbitmq")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("rabbitmqctl");
        assert!(st.success(), "rabbitmqctl {action} failed");
    };
    let plain = check(&format!(
        "type = \"amqp\"\nurl = \"{url}\"\ntimeout = \"2s\""
    ));
    ctl("stop_app");
    let j = until_status(&plain, Status::Fail).await;
    assert!(j.error.unwrap().contains("cannot connect"));
    ctl("start_app");
    until_status(&plain, Status::Pass).await;
}

/// A private PostgreSQL cluster (initdb + pg_ctl from the test bed's PostgreSQL), stopped on drop.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

impl OwnPostgres {
    fn pg(&self, tool: &str, args: &[&str]) -> std::process::ExitStatus {
        let bin = Path::new(&testbed("STEWARD_TEST_PG_BIN")).join(tool);
        let mut cmd = if running_as_root() {
            // PostgreSQL refuses to run as root.
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        cmd.args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    fn init() -> OwnPostgres {
        let dir = tempfile::Builder::new()
            .prefix("steward-pg")
            .tempdir_in("/tmp")
            .unwrap();
        // The server stops and starts again on the same port: take one below
        // the kernel's ephemeral range, which other tests' port-0 binds (and
        // their outgoing connections) never get while it is down.
        let port = (0..1000)
            .map(|i| {
                20_000
                    + (std::process::id() as u16)
                        .wrapping_mul(7)
                        .wrapping_add(i * 13)
                        % 10_000
            })
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port below the ephemeral range");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if running_as_root() {
            assert!(
                std::process::Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(dir.path())
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let pg = OwnPostgres { dir, port };
        assert!(
            pg.pg(
                "initdb",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-A",
                    "trust",
                    "-U",
                    "postgres"
                ]
            )
            .success()
        );
        pg
    }

    fn start(&self) {
        let data = self.dir.path().join("data");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            data.display()
        );
        assert!(
            self.pg(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-w",
                    "-o",
                    &opts,
                    "-l",
                    data.join("log").to_str().unwrap(),
                    "start"
                ]
            )
            .success()
        );
    }

    fn stop(&self) {
        let data = self.dir.path().join("data");
        self.pg(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

#[tokio::test]
async fn postgres_outage_and_recovery() {
    let pg = OwnPostgres::init();
    pg.start();
    let c = check(&format!(
        "type = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{}/postgres\"\ntimeout = \"2s\"",
        pg.port
    ));
    until_status(&c, Status::Pass).await;
    pg.stop();
    let j = until_status(&c, Status::Fail).await;
    assert!(j.error.unwrap().contains("cannot connect"));
    pg.start();
    until_status(&c, Status::Pass).await;
}

#[tokio::test]
async fn redirects_are_followed_unless_disabled() {
    let target = serve(respond_with("200 OK", "text/plain", "landed")).await;
    let location: &'static str = Box::leak(format!("http://{target}/final").into_boxed_str());
    let hop = serve(move |mut s| async move {
        read_request(&mut s).await;
        let r = format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(r.as_bytes()).await;
    })
    .await;
    let j = probe(&check(&format!("type = \"http\"\nurl = \"http://{hop}/start\"\nconditions = [\"[STATUS] == 200\", \"[BODY] == landed\"]"))).await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    let j = probe(&check(&format!("type = \"http\"\nurl = \"http://{hop}/start\"\nfollow_redirects = false\nconditions = [\"[STATUS] == 302\"]"))).await;
    assert_eq!(j.status, Status::Pass, "{j:?}");
    // A redirect loop ends with a clear error.
    let looping = serve(|mut s| async move {
        read_request(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 301 Moved\r\nLocation: /again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    })
    .await;
    let j = probe(&check(&format!(
        "type = \"http\"\nurl = \"http://{looping}/\""
    )))
    .await;
    assert_fail(&j, "more than 10 redirects");
}

/// `health.writer` keeps a batch the database refuses and writes it once the
/// database takes writes again: results probed during the outage are stored,
/// and the refusal shows on the controller's health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_refused_by_the_database_are_kept_and_written_later() {
    use steward_health::{HealthMetrics, Monitor};
    use steward_runtime::Supervisor;
    use steward_state::{CheckHistory, Store};

    let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = target.local_addr().unwrap();
    tokio::spawn(async move { while target.accept().await.is_ok() {} });
    let src = format!("[check.db]\ntype = \"tcp\"\naddress = \"{addr}\"\ninterval = \"1s\"\n");
    let spec = Spec::parse("test.toml", &src, Path::new("/"), &OsResolver).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let admin = rusqlite::Connection::open(store.path()).unwrap();
    admin
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON results BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .unwrap();

    let monitor = Monitor::new(
        spec.checks.values().cloned().collect(),
        Prober::new(Arc::new(OsResolver)),
        store.clone(),
        spec.settings.retention,
        HealthMetrics::default(),
    )
    .unwrap();
    let mut sup = Supervisor::new(store.clone(), Supervisor::always_leader())
        .with_backoff(Duration::from_millis(100));
    monitor.register(&mut sup);
    let health = sup.health();
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(sup.run(cancel.clone()));

    let writer_error = || health.snapshot()["health.writer"].last_error.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !writer_error().is_some_and(|e| e.contains("disk says no")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal seen: {:?}",
            health.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused_at = steward_state::now_ms();
    assert!(store.results("db", 0, i64::MAX, 100).unwrap().is_empty());
    // Let a few more runs pile up behind the refused batch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    admin.execute_batch("DROP TRIGGER refuse;").unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let rows = store.results("db", 0, i64::MAX, 100).unwrap();
        if rows.iter().any(|r| r.ts > refused_at + 2000) {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "results never written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stored.iter().any(|r| r.ts < refused_at),
        "the result refused first was dropped: {stored:?}"
    );
    assert!(
        stored.len() >= 4,
        "every run during the outage is stored: {stored:?}"
    );
    assert!(stored.iter().all(|r| r.status == Status::Pass));
    assert_eq!(health.snapshot()["health.writer"].errors_in_a_row, 0);
    assert!(store.check_states().unwrap().contains_key("db"));

    cancel.cancel();
    running.await.unwrap();
}
