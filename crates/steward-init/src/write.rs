//! Findings → a commented `steward.toml` and the steps left to the user.
//! No I/O here: the text depends only on the findings and the options.

use std::fmt::Write as _;

use crate::{Component, Findings, Format, Protocol};

/// The spec `init` writes and what is left to do.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The spec's text.
    pub text: String,
    /// Steps the user has to take before everything in it works, in order.
    pub todo: Vec<String>,
}

/// Where the backup password lives (made on first use, next to the spec).
const PASSWORD: &str = "${generated:.steward/backup-password}";

/// Writes the spec for `findings`, one block per component. `now` is the
/// time stamped in its header, `listen` the address `serve` will take.
pub fn render(findings: &Findings, now: &str, listen: &str) -> Rendered {
    let mut s = String::new();
    let mut todo = Vec::new();
    let app = findings
        .components
        .iter()
        .find(|c| c.is_application())
        .map(|c| c.name.clone())
        .unwrap_or_else(|| spec_host(&findings.host));
    let _ = writeln!(
        s,
        "# Written by `steward init` on {} at {now}, from what was running there.\n\
         # Each block says what it was made from. Commented blocks are what steward\n\
         # could not decide alone: each says what to fill in. Reference: README.md\n\
         # (\"The spec\"); check it with `steward validate`.\n",
        findings.host
    );
    let _ = writeln!(
        s,
        "[steward]\nname = {}\nstate_dir = \".steward\"\nlisten = {}   # the dashboard and API of `steward serve`\n",
        q(&app),
        q(listen)
    );
    for c in &findings.components {
        match c.protocol {
            Protocol::Http => http(&mut s, c),
            Protocol::Postgres => postgres(&mut s, c, &mut todo),
            Protocol::Redis => redis(&mut s, c, &mut todo),
            Protocol::Amqp => amqp(&mut s, c, &mut todo),
            Protocol::Mysql => mysql(&mut s, c),
            Protocol::Unknown => {}
        }
    }
    logs(&mut s, findings);
    let _ = writeln!(
        s,
        "# ── Alerts ──\n\
         # Checks and backups tell a channel when they fail. Uncomment, set the\n\
         # variable to your webhook's URL (Slack and e-mail work too: README,\n\
         # [alert.NAME]), add `alerts = [\"team\"]` to the checks and backups above,\n\
         # then prove it works: steward alert test team\n\
         # [alert.team]\n\
         # type = \"webhook\"\n\
         # url = \"${{env:STEWARD_WEBHOOK_URL}}\""
    );
    for c in findings.components.iter().filter(|c| c.is_application()) {
        service(&mut s, c);
    }
    Rendered { text: s, todo }
}

fn spec_host(host: &str) -> String {
    let n = crate::spec_name(host);
    if n.is_empty() { "steward".into() } else { n }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn origin(s: &mut String, c: &Component, what: &str) {
    let _ = write!(s, "# ── {} ── {what} at {}", c.name, c.addr);
    if let Some(v) = &c.server {
        let _ = write!(s, " ({v})");
    }
    let _ = writeln!(s);
    if let Some(p) = &c.process {
        let mut cmdline = p.cmdline.join(" ");
        if cmdline.chars().count() > 100 {
            cmdline = cmdline.chars().take(100).collect::<String>() + "…";
        }
        let _ = write!(s, "# pid {}, user {}: {cmdline}", p.pid, p.user);
        if let Some(u) = &p.unit {
            let _ = write!(s, " [systemd unit {u}]");
        }
        let _ = writeln!(s);
    }
}

fn backup_common(s: &mut String, schedule: &str, drill: &str) {
    let _ = writeln!(
        s,
        "password = \"{PASSWORD}\"   # made on first use; keep a copy elsewhere\n\
         schedule = \"{schedule}\"\n\
         keep = {{ last = 24, daily = 7, weekly = 4, monthly = 6 }}\n\
         drill = {{ schedule = \"{drill}\" }}"
    );
}

fn http(s: &mut String, c: &Component) {
    origin(s, c, "HTTP");
    let health = c
        .endpoints
        .iter()
        .find(|e| !matches!(e.path.as_str(), "/metrics" | "/"))
        .or_else(|| c.endpoints.iter().find(|e| e.path == "/"));
    if let Some(e) = health {
        let (why, conditions) = match e.format {
            Format::HealthJson => (
                "answered application/health+json: its \"fail\" fails the check, \"warn\" warns",
                "[\"[STATUS] == 200\"]".to_string(),
            ),
            Format::Json => (
                "answered JSON; add a condition on its fields, e.g. \"[BODY].status == UP\"",
                "[\"[STATUS] == 200\"]".into(),
            ),
            _ if e.path == "/" => (
                "no health endpoint answered; this checks the front page",
                "[\"[STATUS] < 400\"]".into(),
            ),
            _ => ("answered", "[\"[STATUS] == 200\"]".into()),
        };
        let _ = writeln!(
            s,
            "[check.{}]\ntype = \"http\"\nurl = {}\ninterval = \"30s\"\n# {} {why}\nconditions = {conditions}\nwarn = [\"[RESPONSE_TIME] < 1000\"]\ngroup = {}\n",
            c.name,
            q(&format!("http://{}{}", c.addr, e.path)),
            e.path,
            q(&c.name),
        );
    }
    if let Some(m) = c.endpoints.iter().find(|e| e.path == "/metrics") {
        let _ = writeln!(
            s,
            "# {} answered in Prometheus's text format: stored as series\n[scrape.{}]\nurl = {}\ninterval = \"15s\"\n",
            m.path,
            c.name,
            q(&format!("http://{}{}", c.addr, m.path)),
        );
    }
    let Some(p) = &c.process else { return };
    for db in &p.sqlite {
        let _ = writeln!(
            s,
            "# a SQLite database it uses: copied with SQLite's online backup API while it writes\n[backup.{}-{}]\nsource = {{ sqlite = {} }}",
            c.name,
            if p.sqlite.len() == 1 {
                "db".to_string()
            } else {
                crate::spec_name(db.file_stem().and_then(|n| n.to_str()).unwrap_or("db"))
            },
            q(&db.display().to_string()),
        );
        backup_common(s, "17 * * * *", "47 4 * * *");
        let _ = writeln!(s);
    }
    for data in &p.data_dirs {
        let dir = &data.path;
        // One data directory is `NAME-data`; several are told apart by the
        // variable that names each.
        let backup = if p.data_dirs.len() == 1 {
            format!("{}-data", c.name)
        } else {
            format!("{}-{}", c.name, crate::spec_name(&data.var))
        };
        let mut exclude: Vec<String> = p
            .sqlite
            .iter()
            .filter(|db| db.parent() == Some(dir.as_path()))
            .filter_map(|db| db.file_name()?.to_str().map(str::to_string))
            .flat_map(|n| {
                [
                    n.clone(),
                    format!("{n}-wal"),
                    format!("{n}-shm"),
                    format!("{n}-journal"),
                ]
            })
            .collect();
        exclude.sort();
        let _ = writeln!(
            s,
            "# a data directory its environment names ({}){}\n[backup.{backup}]\nsource = {{ paths = [{}]{} }}",
            data.var,
            if exclude.is_empty() {
                ""
            } else {
                " (its SQLite files are backed up above)"
            },
            q(&dir.display().to_string()),
            if exclude.is_empty() {
                String::new()
            } else {
                format!(
                    ", exclude = [{}]",
                    exclude.iter().map(|e| q(e)).collect::<Vec<_>>().join(", ")
                )
            },
        );
        backup_common(s, "27 * * * *", "57 4 * * *");
        let _ = writeln!(s);
    }
}

/// `${env:VAR}` for a server's credentials, with the step to set it. With
/// no process holding its URL, the variable is named after the server
/// (`POSTGRES_URL`, `RABBITMQ_25005_URL`), one per server.
fn credentials(c: &Component, example: &str, todo: &mut Vec<String>) -> (String, String) {
    let fallback = format!("{}_URL", c.name.to_ascii_uppercase().replace('-', "_"));
    match &c.credentials {
        Some(cr) => {
            todo.push(format!(
                "export {}=…   # the value is in the environment of pid {} ({}): tr '\\0' '\\n' < /proc/{}/environ | grep '^{}='",
                cr.var, cr.pid, cr.process, cr.pid, cr.var
            ));
            (
                format!("${{env:{}}}", cr.var),
                format!(
                    "# {} in the environment of {} (pid {}) names this server; steward reads it from yours",
                    cr.var, cr.process, cr.pid
                ),
            )
        }
        None => {
            todo.push(format!(
                "export {fallback}={example}   # for {}: no process here had its URL",
                c.name
            ));
            (
                format!("${{env:{fallback}}}"),
                format!(
                    "# TODO: no process's environment named this server's URL: export {fallback}={example}"
                ),
            )
        }
    }
}

fn postgres(s: &mut String, c: &Component, todo: &mut Vec<String>) {
    origin(s, c, "PostgreSQL");
    if let Some(d) = &c.data_dir {
        let _ = writeln!(
            s,
            "# data directory {} (backed up as a dump, not as files)",
            d.display()
        );
    }
    let (url, why) = credentials(
        c,
        &format!("postgres://USER:PASSWORD@{}/DATABASE", c.addr),
        todo,
    );
    let _ = writeln!(
        s,
        "{why}\n[check.{n}]\ntype = \"postgres\"\nurl = {u}\ninterval = \"30s\"\ngroup = \"data\"\n\n\
         # pg_dump --format=custom, streamed into the repository; a drill restores it\n\
         # into a scratch database (the user needs CREATEDB)\n[backup.{n}]\nsource = {{ postgres = {u} }}",
        n = c.name,
        u = q(&url),
    );
    backup_common(s, "7 * * * *", "37 4 * * *");
    let _ = writeln!(
        s,
        "# A drill can also ask the restored copy a question, e.g.:\n# drill = {{ schedule = \"37 4 * * *\", verify_query = \"SELECT 1 FROM your_table LIMIT 1\" }}\n"
    );
}

fn redis(s: &mut String, c: &Component, todo: &mut Vec<String>) {
    origin(s, c, "Redis");
    if c.auth_required {
        let (url, why) = credentials(c, &format!("redis://:PASSWORD@{}", c.addr), todo);
        let _ = writeln!(
            s,
            "# it wants a password\n{why}\n[check.{}]\ntype = \"redis\"\nurl = {}\ninterval = \"30s\"\ngroup = \"data\"\n\n\
             # TODO: back it up with redis-cli's replication snapshot, given its password\n\
             # in REDISCLI_AUTH, e.g. source = {{ command = [\"redis-cli\", \"-h\", \"{}\", \"-p\", \"{}\", \"--rdb\", \"-\"], filename = \"redis.rdb\" }}\n",
            c.name,
            q(&url),
            c.addr.ip(),
            c.addr.port(),
        );
        return;
    }
    let _ = writeln!(
        s,
        "[check.{n}]\ntype = \"redis\"\nurl = {u}\ninterval = \"30s\"\ngroup = \"data\"\n\n\
         # a consistent snapshot through Redis's replication (redis-cli --rdb)\n\
         [backup.{n}]\nsource = {{ command = [\"redis-cli\", \"-h\", \"{h}\", \"-p\", \"{p}\", \"--rdb\", \"-\"], filename = \"redis.rdb\" }}",
        n = c.name,
        u = q(&format!("redis://{}", c.addr)),
        h = c.addr.ip(),
        p = c.addr.port(),
    );
    backup_common(s, "12 * * * *", "42 4 * * *");
    let _ = writeln!(s);
}

fn amqp(s: &mut String, c: &Component, todo: &mut Vec<String>) {
    origin(s, c, "AMQP");
    let (url, why) = credentials(c, &format!("amqp://USER:PASSWORD@{}/%2f", c.addr), todo);
    let _ = writeln!(
        s,
        "{why}\n[check.{}]\ntype = \"amqp\"\nurl = {}\ninterval = \"30s\"\ngroup = \"data\"\n# queue = \"your-queue\"   # its depth and consumers become [MESSAGES] and [CONSUMERS]\n",
        c.name,
        q(&url),
    );
    let node = c
        .process
        .as_ref()
        .and_then(|p| p.hints.get("RABBITMQ_NODENAME").cloned());
    let is_rabbit = c
        .server
        .as_deref()
        .is_some_and(|v| v.starts_with("RabbitMQ"));
    if is_rabbit {
        let mut command = vec!["rabbitmqctl".to_string()];
        if let Some(n) = &node {
            command.extend(["-n".to_string(), n.clone()]);
        }
        command.extend(["export_definitions".to_string(), "-".to_string()]);
        let _ = writeln!(
            s,
            "# RabbitMQ's definitions (users, vhosts, queues, bindings, policies) — what\n\
             # must exist again after a rebuild; messages in flight are not backed up\n\
             [backup.{}-definitions]\nsource = {{ command = [{}], filename = \"rabbitmq-definitions.json\" }}",
            c.name,
            command.iter().map(|a| q(a)).collect::<Vec<_>>().join(", "),
        );
        backup_common(s, "22 * * * *", "52 4 * * *");
        let _ = writeln!(s);
    }
}

fn mysql(s: &mut String, c: &Component) {
    origin(s, c, "MySQL protocol");
    if let Some(d) = &c.data_dir {
        let _ = writeln!(s, "# data directory {}", d.display());
    }
    let _ = writeln!(
        s,
        "[check.{n}]\ntype = \"tcp\"\naddress = {a}\ninterval = \"30s\"\ngroup = \"data\"\n\n\
         # TODO: a dump needs credentials; as root on Debian's MariaDB (socket\n\
         # authentication) this works as it is — uncomment it:\n\
         # [backup.{n}]\n\
         # source = {{ command = [\"mysqldump\", \"--single-transaction\", \"--all-databases\"], filename = \"mysql.sql\" }}\n\
         # password = \"{PASSWORD}\"\n\
         # schedule = \"2 * * * *\"\n\
         # keep = {{ last = 24, daily = 7, weekly = 4, monthly = 6 }}\n",
        n = c.name,
        a = q(&c.addr.to_string()),
    );
}

fn logs(s: &mut String, findings: &Findings) {
    let mut files: Vec<String> = findings
        .components
        .iter()
        .filter_map(|c| c.process.as_ref())
        .flat_map(|p| p.logs.iter().map(|l| l.display().to_string()))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "# ── Logs ── files its processes hold open for writing (with their rotated siblings)\n\
         [backup.logs]\nsource = {{ logs = [{}] }}\npassword = \"{PASSWORD}\"\nschedule = \"33 2 * * *\"\nkeep = {{ daily = 14, weekly = 8 }}\ndrill = {{ schedule = \"3 5 * * 0\" }}\n",
        files.iter().map(|f| q(f)).collect::<Vec<_>>().join(", ")
    );
}

/// The application as phoenix instances steward runs itself (commented:
/// its proxy takes the port the running copy has now).
fn service(s: &mut String, c: &Component) {
    let Some(p) = &c.process else { return };
    let Some(exe) = &p.exe else { return };
    let program = exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("app")
        .to_string();
    let port = c.addr.port().to_string();
    let addr = c.addr.to_string();
    let mut placed = false;
    let args: Vec<String> = p
        .cmdline
        .iter()
        .skip(1)
        .map(|a| {
            if *a == port {
                placed = true;
                "{port}".to_string()
            } else if *a == addr || a.ends_with(&format!(":{port}")) {
                placed = true;
                // `--listen=0.0.0.0:8080` keeps its flag.
                match a.rsplit_once('=') {
                    Some((flag, _)) => format!("{flag}={{addr}}"),
                    None => "{addr}".to_string(),
                }
            } else {
                a.clone()
            }
        })
        .collect();
    let mut command = vec![format!("/usr/local/bin/{program}")];
    command.extend(args);
    let mut env: Vec<String> = p
        .secrets
        .iter()
        .map(|sec| format!("{} = \"${{env:{}}}\"", sec.var, sec.var))
        .collect();
    env.extend(
        p.data_dirs
            .iter()
            .map(|d| format!("{} = {}", d.var, q(&d.path.display().to_string()))),
    );
    let mut block = vec![
        format!("[image.{}]", c.name),
        "base = \"empty\"".into(),
        format!(
            "artifacts = [{{ from = {}, to = \"/usr/local/bin/{program}\", mode = \"0755\" }}]",
            q(&exe.display().to_string())
        ),
        String::new(),
        format!("[service.{}]", c.name),
        format!("image = \"{}\"", c.name),
        format!(
            "command = [{}]",
            command.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "listen = {}   # steward's proxy, where the application answers now",
            q(&addr)
        ),
        "replicas = { min = 2, max = 4 }".into(),
    ];
    if c.endpoints.iter().any(|e| e.path != "/metrics") {
        block.push(format!(
            "readiness = \"{}\"   # the check above, aimed at each instance",
            c.name
        ));
    }
    block.push("rollout = { max_parallel = 1, auto_revert = true }".into());
    if !env.is_empty() {
        block.push(format!("env = {{ {} }}", env.join(", ")));
    }
    if c.endpoints.iter().any(|e| e.path == "/metrics") {
        block.push("metrics = { path = \"/metrics\", interval = \"15s\" }".into());
    }
    let _ = writeln!(
        s,
        "\n# ── Run {n} as phoenix instances ── steward can build {program} into an image and\n\
         # run it as instances made from it, behind its proxy, replaced when unhealthy\n\
         # and rolled out health-gated. To switch: stop the copy running now (pid {pid}),\n\
         # uncomment both blocks, then `steward up`.{placed}",
        n = c.name,
        pid = p.pid,
        placed = if placed {
            ""
        } else {
            "\n# TODO: make it listen where steward says ({addr} or {port} in command)"
        },
    );
    for line in &block {
        if line.is_empty() {
            let _ = writeln!(s, "#");
        } else {
            let _ = writeln!(s, "# {line}");
        }
    }
}
