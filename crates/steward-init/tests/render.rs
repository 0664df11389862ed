//! The spec `init` writes for fixed findings: its text (a snapshot), and that
//! steward's own spec loader accepts it once the variables it names are set.

use std::path::PathBuf;

use steward_init::{
    Component, Credentials, Endpoint, Findings, Format, Process, Protocol, Secret, scan::DataDir,
    write::render,
};

fn process(pid: i32, name: &str, cmdline: &[&str]) -> Process {
    Process {
        pid,
        name: name.into(),
        exe: Some(PathBuf::from(format!("/usr/local/bin/{name}"))),
        cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        user: "app".into(),
        unit: None,
        logs: Vec::new(),
        sqlite: Vec::new(),
        data_dirs: Vec::new(),
        secrets: Vec::new(),
        hints: Default::default(),
        steward_instance: false,
    }
}

fn component(name: &str, protocol: Protocol, addr: &str, process: Process) -> Component {
    Component {
        name: name.into(),
        protocol,
        addr: addr.parse().unwrap(),
        server: None,
        auth_required: false,
        endpoints: Vec::new(),
        process: Some(process),
        credentials: None,
        data_dir: None,
    }
}

fn findings(data: &std::path::Path) -> Findings {
    let mut app = process(100, "shop", &["shop", "serve", "--port", "8080"]);
    app.unit = Some("shop.service".into());
    app.logs = vec![data.join("shop.log")];
    app.sqlite = vec![data.join("shop.db")];
    app.data_dirs = vec![DataDir {
        var: "SHOP_DATA".into(),
        path: data.to_path_buf(),
    }];
    app.secrets = vec![Secret {
        var: "DATABASE_URL".into(),
        kind: "postgres".into(),
        port: Some(5432),
    }];
    let mut web = component("shop", Protocol::Http, "127.0.0.1:8080", app);
    web.endpoints = vec![
        Endpoint {
            path: "/healthz".into(),
            status: 200,
            format: Format::HealthJson,
        },
        Endpoint {
            path: "/metrics".into(),
            status: 200,
            format: Format::Prometheus,
        },
    ];
    let mut pg = component(
        "postgres",
        Protocol::Postgres,
        "127.0.0.1:5432",
        process(
            10,
            "postgres",
            &[
                "/usr/lib/postgresql/15/bin/postgres",
                "-D",
                "/var/lib/postgresql/15/main",
            ],
        ),
    );
    pg.data_dir = Some("/var/lib/postgresql/15/main".into());
    pg.credentials = Some(Credentials {
        var: "DATABASE_URL".into(),
        pid: 100,
        process: "shop".into(),
    });
    let mut redis = component(
        "redis",
        Protocol::Redis,
        "127.0.0.1:6379",
        process(20, "redis-server", &["redis-server", "127.0.0.1:6379"]),
    );
    redis.auth_required = true;
    let mut rabbit = component(
        "rabbitmq",
        Protocol::Amqp,
        "127.0.0.1:5672",
        process(30, "beam.smp", &["beam.smp"]),
    );
    rabbit.server = Some("RabbitMQ 3.10.8".into());
    let mut mysql = component(
        "mysql",
        Protocol::Mysql,
        "127.0.0.1:3306",
        process(40, "mariadbd", &["/usr/sbin/mariadbd"]),
    );
    mysql.server = Some("5.5.5-10.11.6-MariaDB-0+deb12u1".into());
    Findings {
        host: "web-1".into(),
        components: vec![web, pg, redis, rabbit, mysql],
        skipped: Vec::new(),
        hidden_sockets: 0,
    }
}

#[test]
fn the_spec_for_an_application_and_its_servers() {
    let data = PathBuf::from("/srv/shop/data");
    let r = render(&findings(&data), "2026-11-29 01:00 UTC", "127.0.0.1:7070");
    insta::assert_snapshot!(r.text);
    assert_eq!(r.todo.len(), 3, "{:?}", r.todo);
    assert!(r.todo[0].starts_with(
        "export DATABASE_URL=…   # the value is in the environment of pid 100 (shop)"
    ));
    assert!(r.todo[1].starts_with("export REDIS_URL=redis://:PASSWORD@127.0.0.1:6379"));
    assert!(r.todo[2].starts_with("export RABBITMQ_URL=amqp://USER:PASSWORD@127.0.0.1:5672/%2f"));
}

#[test]
fn steward_loads_the_spec_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let r = render(
        &findings(dir.path()),
        "2026-11-29 01:00 UTC",
        "127.0.0.1:7070",
    );
    let spec = dir.path().join("steward.toml");
    std::fs::write(&spec, &r.text).unwrap();
    // The loader reads the process environment: a child process (this test
    // binary again) gets the variables the spec names.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "load_in_child", "--nocapture"])
        .env("STEWARD_INIT_SPEC", &spec)
        .env("DATABASE_URL", "postgres://shop:pw@127.0.0.1:5432/shop")
        .env("REDIS_URL", "redis://:pw@127.0.0.1:6379")
        .env("RABBITMQ_URL", "amqp://shop:pw@127.0.0.1:5672/%2f")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{}", r.text);
    assert!(
        text.contains("loaded: 5 checks, 5 backups, 1 scrape"),
        "{text}"
    );
}

/// Run by `steward_loads_the_spec_it_writes` in a child process with the
/// variables set; does nothing on its own.
#[test]
fn load_in_child() {
    let Some(path) = std::env::var_os("STEWARD_INIT_SPEC") else {
        return;
    };
    match steward_spec::Spec::load(std::path::Path::new(&path)) {
        Ok(spec) => println!(
            "loaded: {} checks, {} backups, {} scrape",
            spec.checks.len(),
            spec.backups.len(),
            spec.scrapes.len()
        ),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn several_data_directories_get_a_backup_each() {
    let mut f = findings(std::path::Path::new("/srv/shop/data"));
    let app = f.components[0].process.as_mut().unwrap();
    app.data_dirs.push(DataDir {
        var: "UPLOADS_DIR".into(),
        path: "/srv/shop/uploads".into(),
    });
    let r = render(&f, "2026-11-29 01:00 UTC", "127.0.0.1:7070");
    assert!(
        r.text
            .contains("[backup.shop-shop-data]\nsource = { paths = [\"/srv/shop/data\"]"),
        "{}",
        r.text
    );
    assert!(
        r.text
            .contains("[backup.shop-uploads-dir]\nsource = { paths = [\"/srv/shop/uploads\"] }"),
        "{}",
        r.text
    );
}
