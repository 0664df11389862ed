//! The binary against the test bed's real OpenStack (scripts/openstack).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use steward_openstack::{Compute, Images, Networks, NewImage, NewServer, Session};

use crate::common::{steward, testbed};

fn cloud_spec(dir: &Path) -> std::path::PathBuf {
    let spec = dir.join("steward.toml");
    std::fs::write(
        &spec,
        r#"
[steward]
state_dir = "state"

[cloud.test]
auth_url = "${env:STEWARD_TEST_OS_AUTH_URL}"
username = "demo"
password = "${env:STEWARD_TEST_OS_DEMO_PASSWORD}"
project = "demo"
region = "RegionOne"
"#,
    )
    .unwrap();
    spec
}

fn session() -> Arc<Session> {
    let config = steward_openstack::Settings {
        auth_url: Some(testbed("STEWARD_TEST_OS_AUTH_URL")),
        username: Some("demo".into()),
        password: Some(testbed("STEWARD_TEST_OS_DEMO_PASSWORD")),
        project_name: Some("demo".into()),
        region_name: Some("RegionOne".into()),
        ..Default::default()
    }
    .finish(Duration::from_secs(60), 2)
    .unwrap();
    Arc::new(Session::new(config).unwrap())
}

/// A raw Glance image holding `bytes` (written to `file` first): its id.
async fn raw_image(
    glance: &Images,
    name: &str,
    tags: Vec<String>,
    properties: BTreeMap<String, String>,
    file: &Path,
    bytes: Vec<u8>,
) -> String {
    let image = glance
        .create(&NewImage {
            name: name.to_string(),
            disk_format: "raw".into(),
            container_format: "bare".into(),
            tags,
            properties,
        })
        .await
        .unwrap();
    std::fs::write(file, bytes).unwrap();
    glance
        .upload(&image, file, Duration::from_secs(60))
        .await
        .unwrap();
    image
}

/// (kind, name) of each orphan `steward fleet orphans --json` lists.
fn listed(spec: &Path, delete: bool) -> Vec<(String, String)> {
    let args: &[&str] = if delete {
        &["fleet", "orphans", "--delete", "--json"]
    } else {
        &["fleet", "orphans", "--json"]
    };
    let (code, out, err) = steward(spec, args, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut all: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            if delete {
                assert_eq!(o["deleted"], true, "{o}");
            }
            (
                o["kind"].as_str().unwrap().to_string(),
                o["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    all.sort();
    all
}

/// A server made by a steward that died before recording it, and the image
/// it boots from: `fleet orphans` lists what carries this steward's tag and
/// is in no record (the image only once no server boots from it), leaves
/// another steward's server alone, and `--delete` removes them.
#[test]
fn fleet_orphans_lists_and_deletes_what_no_record_knows() {
    let dir = tempfile::tempdir().unwrap();
    let spec = cloud_spec(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ours = steward_fleet::provider::fleet_tag(&state);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = session();
    let (nova, glance) = (Compute::new(s.clone()), Images::new(s));
    let name = format!("steward-orphan-{}", std::process::id());
    let (image, server, other) = rt.block_on(async {
        let image = raw_image(
            &glance,
            &name,
            vec!["steward".into(), ours.clone()],
            BTreeMap::from([(
                "steward_digest".to_string(),
                "sha256:00000000deadbeef".to_string(),
            )]),
            &dir.path().join("disk.raw"),
            vec![1u8; 4096],
        )
        .await;
        let flavor = nova.flavor_id("steward.tiny").await.unwrap();
        let server = |tag: String, instance: &str| NewServer {
            metadata: BTreeMap::from([("steward_instance".to_string(), instance.to_string())]),
            tags: vec!["steward".into(), tag],
            ..NewServer::new(
                &format!("{name}-{instance}"),
                &image,
                &flavor,
                Networks::None,
            )
        };
        let mine = nova
            .create(&server(ours.clone(), "api-dead00"))
            .await
            .unwrap();
        let other = nova
            .create(&server("steward-fleet-someoneelse".into(), "api-other0"))
            .await
            .unwrap();
        (image, mine, other)
    });

    // The server is an orphan; its image is not while a server boots from it.
    assert_eq!(
        listed(&spec, false),
        [("server".to_string(), format!("{name}-api-dead00"))]
    );
    let (code, out, _) = steward(&spec, &["fleet", "orphans"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("instance api-dead00 is in no record"), "{out}");
    assert!(out.contains("--delete"), "{out}");

    assert_eq!(
        listed(&spec, true),
        [("server".to_string(), format!("{name}-api-dead00"))]
    );
    rt.block_on(async {
        assert_eq!(nova.get(&server).await.unwrap(), None, "deleted in Nova");
        assert!(
            nova.get(&other).await.unwrap().is_some(),
            "another steward's stays"
        );
    });
    // Now nothing boots from the image: it is one too.
    assert_eq!(listed(&spec, true), [("image".to_string(), name.clone())]);
    rt.block_on(async {
        assert_eq!(glance.get(&image).await.unwrap(), None);
        nova.delete_and_wait(&other, Duration::from_secs(60))
            .await
            .unwrap();
    });
    let (code, out, _) = steward(&spec, &["fleet", "orphans"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("no orphans"), "{out}");

    // A spec without clouds is told so.
    std::fs::write(
        &spec,
        "[check.x]\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let (code, _, err) = steward(&spec, &["fleet", "orphans"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no [cloud.NAME]"), "{err}");
}

/// A spec with the test cloud, a service `app` on it (its server on the
/// test network, `port`), a tcp check `app` the drills aim at a server, and
/// `snapshot` (the `[snapshot.NAME]` table, written out by the caller).
fn snapshot_spec(dir: &Path, port: u16, service_extra: &str, snapshot: &str) -> String {
    let spec = cloud_spec(dir);
    std::fs::write(dir.join("app"), "#!/bin/sh\n").unwrap();
    let cloud = std::fs::read_to_string(spec).unwrap();
    format!(
        r#"{cloud}
[image.app]
base = "empty"
artifacts = [{{ from = "app", to = "/app", mode = "0755" }}]

[service.app]
image = "app"
command = ["/app"]
provider = "openstack"
cloud = "test"
flavor = "steward.tiny"
networks = ["steward-test"]
port = {port}
{service_extra}
[check.app]
type = "tcp"
address = "127.0.0.1:1"
timeout = "1s"

{snapshot}
"#
    )
}

/// Listeners on `port` at every address the test network hands out (the
/// fake servers run nothing: the test answers for them).
fn answer_for_servers(port: u16) -> Vec<std::net::TcpListener> {
    let listeners: Vec<std::net::TcpListener> = (1..=254)
        .filter_map(|n| std::net::TcpListener::bind((format!("127.0.1.{n}").as_str(), port)).ok())
        .collect();
    assert!(listeners.len() > 200);
    listeners
}

/// `[snapshot.NAME]` on the test bed's Nova (its fake driver with snapshots
/// that carry data, scripts/nova/): snapshots taken of a server, listed,
/// thinned by `keep`, drilled (the newest booted, the drill's check run
/// against its address — a listener the test holds there, since a fake
/// server runs nothing — and the server deleted, passed or not), restored as
/// a server of the service's flavor and network, and counted as orphans
/// once no `[snapshot.NAME]` claims them.
#[test]
fn snapshots_are_taken_kept_drilled_restored_and_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let spec = dir.path().join("steward.toml");
    let with = |name: &str| {
        snapshot_spec(
            dir.path(),
            port,
            "",
            &format!(
                "[snapshot.{name}]\nservice = \"app\"\nkeep = {{ last = 1 }}\ndrill = {{ check = \"app\" }}"
            ),
        )
    };
    std::fs::write(&spec, with("app")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = session();
    let (nova, glance) = (Compute::new(s.clone()), Images::new(s));
    let name = format!("steward-snap-{}", std::process::id());
    let server = rt.block_on(async {
        let image = raw_image(
            &glance,
            &name,
            vec![],
            BTreeMap::new(),
            &dir.path().join("disk.raw"),
            vec![7u8; 8192],
        )
        .await;
        let flavor = nova.flavor_id("steward.tiny").await.unwrap();
        let id = nova
            .create(&NewServer::new(&name, &image, &flavor, Networks::None))
            .await
            .unwrap();
        nova.wait(&id, "ACTIVE", Duration::from_secs(120))
            .await
            .unwrap();
        id
    });

    for _ in 0..2 {
        let (code, out, err) = steward(
            &spec,
            &["snapshot", "take", "app", "--server", &server],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("snapshot app: "), "{out}");
    }
    let (code, out, _) = steward(&spec, &["snapshot", "list", "app", "--json"], &[]);
    assert_eq!(code, 0);
    let taken: serde_json::Value = serde_json::from_str(&out).unwrap();
    let snaps = taken[0]["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2, "{taken}");
    for sn in &snaps {
        assert_eq!(
            sn["status"], "active",
            "the snapshot's data is uploaded: {sn}"
        );
        assert_eq!(sn["server"], server.as_str());
        assert_eq!(sn["size"], 8192, "a copy of the server's disk: {sn}");
    }
    let (newest, oldest) = (
        snaps[0]["id"].as_str().unwrap().to_string(),
        snaps[1]["id"].as_str().unwrap().to_string(),
    );

    // keep = { last = 1 }: the older one goes.
    let (code, out, _) = steward(&spec, &["snapshot", "forget", "app", "--dry-run"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("would remove {oldest}")), "{out}");
    assert!(out.contains(&format!("keep    {newest}")), "{out}");
    let (code, out, _) = steward(&spec, &["snapshot", "forget", "app"], &[]);
    assert_eq!(code, 0, "{out}");
    rt.block_on(async {
        assert_eq!(
            glance.get(&oldest).await.unwrap(),
            None,
            "removed in Glance"
        );
        assert!(glance.get(&newest).await.unwrap().is_some());
    });

    // A drill: the newest booted on the service's network, its check passes
    // against the address Neutron gave it, the server is deleted.
    let listeners = answer_for_servers(port);
    let (code, out, err) = steward(&spec, &["snapshot", "drill", "app", "--json"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let r = &report[0];
    assert_eq!(r["passed"], true, "{r}");
    assert_eq!(r["snapshot"]["id"], newest.as_str());
    assert!(
        r["address"].as_str().unwrap().starts_with("127.0.1."),
        "{r}"
    );
    assert_eq!(r["check"][0], "app");
    let drilled = r["server"].as_str().unwrap().to_string();
    rt.block_on(async {
        assert_eq!(
            nova.get(&drilled).await.unwrap(),
            None,
            "the drill's server is gone"
        );
    });
    // Nothing answers: the drill fails, and still leaves no server behind.
    drop(listeners);
    let (code, out, _) = steward(&spec, &["snapshot", "drill", "app", "--json"], &[]);
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report[0]["passed"], false);
    assert!(
        report[0]["error"].as_str().unwrap().contains("check `app`"),
        "{out}"
    );
    let failed = report[0]["server"].as_str().unwrap().to_string();
    rt.block_on(async {
        assert_eq!(nova.get(&failed).await.unwrap(), None);
    });

    // Restore: a server of the service's flavor on its network, from the snapshot.
    let (code, out, err) = steward(&spec, &["snapshot", "restore", "app"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    let restored = out
        .split("as server ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    rt.block_on(async {
        let srv = nova
            .get(&restored)
            .await
            .unwrap()
            .expect("the restored server");
        assert_eq!(srv.status, "ACTIVE");
        assert_eq!(srv.image_id.as_deref(), Some(newest.as_str()));
        nova.delete_and_wait(&restored, Duration::from_secs(120))
            .await
            .unwrap();
    });

    // Once no [snapshot.NAME] claims it, the snapshot is an orphan.
    std::fs::write(&spec, with("renamed")).unwrap();
    assert_eq!(
        listed(&spec, false),
        [(
            "snapshot".to_string(),
            snaps[0]["name"].as_str().unwrap().to_string()
        )]
    );
    assert_eq!(listed(&spec, true).len(), 1);
    rt.block_on(async {
        assert_eq!(glance.get(&newest).await.unwrap(), None);
        nova.delete_and_wait(&server, Duration::from_secs(120))
            .await
            .unwrap();
    });
}

/// `serve` on a schedule: the service's server (a Nova server the fleet
/// booted) is snapshotted every few seconds, retention keeps the newest,
/// and the drill boots it and checks it — each outcome an event.
#[test]
fn serve_takes_thins_and_drills_snapshots_on_their_schedules() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let spec = dir.path().join("steward.toml");
    std::fs::write(
        &spec,
        snapshot_spec(
            dir.path(),
            port,
            "replicas = { min = 1, max = 1 }\n",
            r#"[snapshot.app]
service = "app"
schedule = "*/3 * * * * *"
keep = { last = 1 }
drill = { schedule = "*/5 * * * * *", check = "app" }"#,
        ),
    )
    .unwrap();
    let _listeners = answer_for_servers(port);
    let serve = crate::common::serve(&spec, &[]);
    let state = dir.path().join("state");
    let count = |kind: &str| crate::common::events(&state, kind, Some("app")).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while count("snapshot.taken") < 2
        || count("snapshot.forgot") < 1
        || count("snapshot.drill_succeeded") < 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "taken {}, forgot {}, drilled {}, failed {:?} {:?}\n{}",
            count("snapshot.taken"),
            count("snapshot.forgot"),
            count("snapshot.drill_succeeded"),
            crate::common::events(&state, "snapshot.failed", Some("app"))
                .iter()
                .map(|e| e.event.message.clone())
                .collect::<Vec<_>>(),
            crate::common::events(&state, "snapshot.drill_failed", Some("app"))
                .iter()
                .map(|e| e.event.message.clone())
                .collect::<Vec<_>>(),
            serve.log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(serve.stop(), 0);
    let (code, out, err) = steward(&spec, &["down"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // What is left: the newest snapshot (retention kept it). Gone with the spec's claim.
    std::fs::write(
        &spec,
        std::fs::read_to_string(&spec)
            .unwrap()
            .replace("[snapshot.app]", "[snapshot.gone]"),
    )
    .unwrap();
    let left = listed(&spec, true);
    assert!(
        !left.is_empty() && left.iter().all(|(k, _)| k == "snapshot" || k == "image"),
        "{left:?}"
    );
    assert!(listed(&spec, false).is_empty());
}
