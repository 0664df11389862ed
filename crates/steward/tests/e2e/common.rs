//! Helpers shared by the end-to-end modules.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steward_state::EventLog;

/// The steward binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_steward");

/// A test bed setting (scripts/testbed writes them).
pub(crate) fn testbed(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: start the test servers with `scripts/testbed up` and source `scripts/testbed env` (scripts/test does both)")
    })
}

/// A running `steward serve` on a free port; killed (SIGKILL) when dropped.
pub(crate) struct Serve {
    pub(crate) child: Child,
    /// The API's address, as `serve` printed it.
    pub(crate) addr: String,
    /// Everything it logged (JSON lines), so far.
    pub(crate) log: Arc<Mutex<String>>,
}

impl Serve {
    /// `http://ADDR/PATH`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The API's address as a socket address.
    pub(crate) fn socket(&self) -> SocketAddr {
        self.addr.parse().unwrap()
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn stop(mut self) -> i32 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let code = self.child.wait().unwrap().code().unwrap_or(-1);
        std::mem::forget(self);
        code
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `steward -f SPEC serve` with extra environment and waits for its address.
pub(crate) fn serve(spec: &Path, env: &[(String, String)]) -> Serve {
    serve_with(spec, env, &[])
}

/// `serve` with extra global arguments (before the subcommand).
pub(crate) fn serve_with(spec: &Path, env: &[(String, String)], extra: &[&str]) -> Serve {
    let mut cmd = Command::new(BIN);
    cmd.arg("-f")
        .arg(spec)
        .args(["--log-format", "json"])
        .args(extra)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (k, v)));
    serving(cmd)
}

/// Runs a command that ends up serving (`serve`, `up`; JSON logs) and waits
/// for the address it prints.
pub(crate) fn serving(mut cmd: Command) -> Serve {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(a) = v.get("addr").and_then(|a| a.as_str())
            {
                let _ = tx.send(a.to_string());
            }
            let mut l = log2.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("serve did not start: {}", log.lock().unwrap()));
    Serve { child, addr, log }
}

/// Events of a kind (prefix), optionally about one subject, oldest first; empty
/// while the state database does not exist yet.
pub(crate) fn events(
    state_dir: &Path,
    kind: &str,
    subject: Option<&str>,
) -> Vec<steward_state::Event> {
    if !state_dir.join("state.db").exists() {
        return Vec::new();
    }
    let Ok(store) = steward_state::Store::open(state_dir) else {
        return Vec::new();
    };
    let mut e = store
        .events(&steward_state::EventQuery {
            kind_prefix: Some(kind.into()),
            subject: subject.map(String::from),
            limit: 100,
            ..Default::default()
        })
        .unwrap_or_default();
    e.reverse();
    e
}

/// Polls `f` until it holds; fails the test after 30 s.
pub(crate) fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The body of a GET over plain HTTP/1.0.
pub(crate) fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// Runs `steward -f SPEC ARGS…` with extra environment: exit code, stdout, stderr.
pub(crate) fn steward(
    spec: &Path,
    args: &[&str],
    env: &[(String, String)],
) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("-f")
        .arg(spec)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port (bound and let go; the kernel does not hand it out
/// again right away).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the tests run Chromium: headless, without a sandbox (root), and
/// without reaching out to the network for itself.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// The test bed's Chromium (`STEWARD_TEST_CHROMIUM`, else Debian's).
fn chromium() -> String {
    let chromium =
        std::env::var("STEWARD_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed (Debian package chromium; scripts/testbed install)"
    );
    chromium
}

/// The DOM of `url` after Chromium (headless) loaded it and ran its scripts.
pub(crate) fn chromium_dom(url: &str) -> String {
    let chromium = chromium();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(&chromium)
        .args(CHROMIUM_FLAGS)
        .arg("--virtual-time-budget=3000")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cached debootstrap root of the test bed (finished).
pub(crate) fn debian_root() -> std::path::PathBuf {
    let dir = std::env::var("STEWARD_TEST_DEBIAN_ROOT").unwrap_or_else(|_| {
        panic!("STEWARD_TEST_DEBIAN_ROOT is not set: run `scripts/testbed up` (scripts/test does)")
    });
    let dir = std::path::PathBuf::from(dir);
    assert!(
        dir.join(".steward-complete").exists(),
        "{} is not a finished debootstrap root; run `scripts/testbed debian-root`",
        dir.display()
    );
    dir
}

/// Runs `script` in a private mount namespace where `$ROOT` is an overlay of the
/// cached Debian root (changes land in `upper`), with /proc and /dev mounted in it.
pub(crate) fn in_debian_root(lower: &Path, work: &Path, script: &str) -> (i32, String) {
    for d in ["upper", "work", "merged"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    let full = format!(
        "set -e\n\
         ROOT={merged}\n\
         mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={w} $ROOT\n\
         mount -t proc proc $ROOT/proc\n\
         mount --rbind /dev $ROOT/dev\n\
         set +e\n{script}",
        merged = work.join("merged").display(),
        lower = lower.display(),
        upper = work.join("upper").display(),
        w = work.join("work").display(),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            &full,
        ])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Loads `url` in headless Chromium at 1280×900 and returns the value of a
/// JavaScript `expression` evaluated in the page once it has loaded: how
/// the page is laid out for a person (element boxes, computed styles).
/// Spoken over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// JSON messages ended by NUL on file descriptors 3 and 4), so no port and
/// no WebSocket client are needed. Chromium is killed after 60 s at most.
pub(crate) fn chromium_eval(url: &str, expression: &str) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let chromium = chromium();
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            // Our stdin becomes its fd 3 (commands), our stdout its fd 4 (answers).
            r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#,
            &chromium,
        ])
        .args(CHROMIUM_FLAGS)
        .args([
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            &format!("--user-data-dir={}", profile.path().display()),
            "about:blank",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        })
    };
    let mut to = child.stdin.take().unwrap();
    let mut from = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut id = 0u64;
    let mut call = |method: &str, params: serde_json::Value, session: Option<&str>| {
        id += 1;
        let mut msg = serde_json::json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        to.write_all(&serde_json::to_vec(&msg).unwrap()).unwrap();
        to.write_all(b"\0").unwrap();
        to.flush().unwrap();
        loop {
            let mut buf = Vec::new();
            let n = from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "Chromium went away during {method}");
            buf.pop();
            let answer: serde_json::Value = serde_json::from_slice(&buf).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    };
    let target = call(
        "Target.createTarget",
        serde_json::json!({ "url": "about:blank" }),
        None,
    );
    let session = call(
        "Target.attachToTarget",
        serde_json::json!({ "targetId": target["targetId"], "flatten": true }),
        None,
    )["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let session = Some(session.as_str());
    call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        session,
    );
    call("Page.navigate", serde_json::json!({ "url": url }), session);
    let eval =
        |call: &mut dyn FnMut(&str, serde_json::Value, Option<&str>) -> serde_json::Value,
         expr: &str| {
            call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expr, "returnByValue": true }),
                session,
            )["result"]["value"]
                .clone()
        };
    let loaded = Instant::now();
    while eval(&mut call, "document.readyState") != "complete" {
        assert!(
            loaded.elapsed() < Duration::from_secs(30),
            "{url} never loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let value = eval(&mut call, expression);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    let _ = watchdog.join();
    value
}
