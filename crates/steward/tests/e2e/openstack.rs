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
        let image = glance
            .create(&NewImage {
                name: name.clone(),
                disk_format: "raw".into(),
                container_format: "bare".into(),
                tags: vec!["steward".into(), ours.clone()],
                properties: BTreeMap::from([(
                    "steward_digest".to_string(),
                    "sha256:00000000deadbeef".to_string(),
                )]),
            })
            .await
            .unwrap();
        let file = dir.path().join("disk.raw");
        std::fs::write(&file, vec![1u8; 4096]).unwrap();
        glance
            .upload(&image, &file, Duration::from_secs(60))
            .await
            .unwrap();
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
