//! The client against the test bed's real OpenStack (scripts/openstack):
//! Keystone, Glance and Nova with the fake driver — its servers are database
//! rows that go ACTIVE; they get a loopback address from the Neutron stand-in.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use steward_openstack::config::{AppCredential, Credentials, Domain, Named};
use steward_openstack::session::Call;
use steward_openstack::{
    CloudConfig, Compute, Error, Images, Networks, NewImage, NewServer, Session, network,
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test (or source <(scripts/testbed env))")
    })
}

fn config(user: &str, password: &str, project: &str) -> CloudConfig {
    let domain = Domain::Id("default".into());
    CloudConfig {
        auth_url: env("STEWARD_TEST_OS_AUTH_URL"),
        credentials: Credentials::Password {
            user: Named::Name {
                name: user.into(),
                domain: domain.clone(),
            },
            password: password.into(),
            project: Named::Name {
                name: project.into(),
                domain,
            },
        },
        region: Some("RegionOne".into()),
        interface: Default::default(),
        timeout: Duration::from_secs(60),
        retries: 2,
        backoff: Duration::from_millis(200),
    }
}

fn demo() -> Arc<Session> {
    Arc::new(
        Session::new(config(
            "demo",
            &env("STEWARD_TEST_OS_DEMO_PASSWORD"),
            "demo",
        ))
        .unwrap(),
    )
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}-{}", hex::encode(b))
}

/// A small image in Glance (FakeDriver boots anything).
async fn image(session: &Arc<Session>, tag: &str) -> String {
    let images = Images::new(session.clone());
    let id = images
        .create(&NewImage {
            name: tag.into(),
            disk_format: "raw".into(),
            container_format: "bare".into(),
            tags: vec![tag.into()],
            properties: [("steward_digest".to_string(), tag.to_string())].into(),
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.raw");
    std::fs::write(&file, vec![7u8; 64 * 1024]).unwrap();
    images
        .upload(&id, &file, Duration::from_secs(60))
        .await
        .unwrap();
    id
}

/// A server named and tagged `tag`, from `image_id`, of `flavor`, on no network.
async fn tagged(nova: &Compute, tag: &str, image_id: &str, flavor: &str) -> NewServer {
    NewServer {
        tags: vec![tag.to_string()],
        ..NewServer::new(
            tag,
            image_id,
            &nova.flavor_id(flavor).await.unwrap(),
            Networks::None,
        )
    }
}

#[tokio::test]
async fn password_and_application_credential_logins_find_the_catalog() {
    let s = demo();
    assert_eq!(
        s.endpoint("compute").await.unwrap(),
        env("STEWARD_TEST_OS_NOVA")
    );
    assert_eq!(
        s.endpoint("image").await.unwrap(),
        env("STEWARD_TEST_OS_GLANCE")
    );
    let project = s
        .project_id()
        .await
        .unwrap()
        .expect("a project-scoped token");
    assert!(matches!(
        s.endpoint("no-such-service").await,
        Err(Error::Catalog { .. })
    ));

    // An application credential made by demo logs in on its own.
    let token = s.token_value().await.unwrap();
    let http = steward_net::http(steward_net::HttpOptions {
        timeout: Some(Duration::from_secs(30)),
        connect_timeout: None,
        no_proxy: true,
    })
    .unwrap();
    let auth = env("STEWARD_TEST_OS_AUTH_URL");
    let me: serde_json::Value = http
        .get(format!("{auth}/auth/tokens"))
        .header("X-Auth-Token", &token)
        .header("X-Subject-Token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = me["token"]["user"]["id"].as_str().unwrap();
    let name = unique("steward-test");
    let made: serde_json::Value = http
        .post(format!("{auth}/users/{user}/application_credentials"))
        .header("X-Auth-Token", &token)
        .json(&serde_json::json!({"application_credential": {"name": name, "secret": "app-secret-1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = made["application_credential"]["id"].as_str().unwrap();
    for credential in [
        AppCredential::Id(id.into()),
        AppCredential::Name {
            name: name.clone(),
            user: Named::Id(user.into()),
        },
    ] {
        let mut c = config("unused", "unused", "unused");
        c.credentials = Credentials::ApplicationCredential {
            credential,
            secret: "app-secret-1".into(),
        };
        let app = Session::new(c).unwrap();
        assert_eq!(
            app.project_id().await.unwrap().as_deref(),
            Some(project.as_str())
        );
        assert_eq!(
            app.endpoint("compute").await.unwrap(),
            env("STEWARD_TEST_OS_NOVA")
        );
    }

    // A wrong password is Keystone's refusal, named as such.
    let bad = Session::new(config("demo", "not-the-password", "demo")).unwrap();
    let err = bad.endpoint("compute").await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_and_the_call_goes_through() {
    // Keystone's own API validates every token it is shown (the other
    // services cache a validation for minutes), so a revoked token is
    // refused on the next call.
    let s = demo();
    let projects = || Call::new("identity", Method::GET, "/auth/projects");
    s.send(projects()).await.unwrap();
    assert_eq!(s.logins(), 1);
    s.send(projects()).await.unwrap();
    assert_eq!(s.logins(), 1, "the token is kept");
    s.revoke_token().await.unwrap();
    // 401 for the old token: one new login, then the call goes through.
    let answer = s.send(projects()).await.unwrap();
    assert_eq!(s.logins(), 2);
    assert!(
        answer.json().unwrap()["projects"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}

#[tokio::test]
async fn a_server_is_made_found_by_its_tag_and_deleted() {
    let s = demo();
    let nova = Compute::new(s.clone());
    let tag = unique("steward-test");
    let image_id = image(&s, &tag).await;
    let net = network(&s, "steward-test").await.unwrap();
    let err = network(&s, "no-such-network").await.unwrap_err();
    assert!(
        err.to_string().contains("steward-test"),
        "names the networks there are: {err}"
    );
    let flavor = nova.flavor_id("steward.tiny").await.unwrap();
    assert_eq!(nova.flavor_id(&flavor).await.unwrap(), flavor, "by id too");
    let err = nova.flavor_id("m9.gigantic").await.unwrap_err();
    assert!(err.to_string().contains("steward.tiny"), "{err}");

    let id = nova
        .create(&NewServer {
            metadata: [("steward_service".to_string(), "api".to_string())].into(),
            tags: vec!["steward".into(), tag.clone()],
            user_data: Some("#cloud-config\n{}\n".into()),
            ..NewServer::new(
                &tag,
                &image_id,
                &flavor,
                Networks::Ids(vec![net.id.clone()]),
            )
        })
        .await
        .unwrap();
    let active = nova
        .wait(&id, "ACTIVE", Duration::from_secs(120))
        .await
        .unwrap();
    let ip: std::net::Ipv4Addr = active
        .fixed_ipv4(Some("steward-test"))
        .expect("a fixed address on the network")
        .parse()
        .unwrap();
    assert_eq!(ip.octets()[..3], [127, 0, 1], "{ip}");
    assert_eq!(active.image_id.as_deref(), Some(image_id.as_str()));

    let listed = nova.list(&tag).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(listed[0].metadata["steward_service"], "api");
    assert!(listed[0].tags.contains(&"steward".to_string()));

    nova.delete_and_wait(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(nova.get(&id).await.unwrap(), None);
    assert!(nova.list(&tag).await.unwrap().is_empty());
    nova.delete(&id).await.unwrap();

    let images = Images::new(s.clone());
    let found = images.with_tag(&tag).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].properties["steward_digest"], tag);
    assert_eq!(found[0].size, Some(64 * 1024));
    images.delete(&image_id).await.unwrap();
    assert_eq!(images.get(&image_id).await.unwrap(), None);
}

#[tokio::test]
async fn a_server_no_host_can_take_fails_with_nova_s_fault_and_is_deleted() {
    let s = demo();
    let nova = Compute::new(s.clone());
    let tag = unique("steward-test");
    let image_id = image(&s, &tag).await;
    let id = nova
        .create(&tagged(&nova, &tag, &image_id, "steward.huge").await)
        .await
        .unwrap();
    let err = nova
        .wait(&id, "ACTIVE", Duration::from_secs(120))
        .await
        .unwrap_err();
    match &err {
        Error::ServerFailed { id: failed, fault } => {
            assert_eq!(failed, &id);
            assert!(fault.contains("No valid host"), "{fault}");
        }
        other => panic!("expected the server's fault, got {other}"),
    }
    nova.delete_and_wait(&id, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(nova.list(&tag).await.unwrap().is_empty(), "no orphan");
    Images::new(s).delete(&image_id).await.unwrap();
}

#[tokio::test]
async fn a_full_quota_is_nova_s_refusal_with_its_message() {
    let s = Arc::new(Session::new(config("quota", "quota", "quota")).unwrap());
    let nova = Compute::new(s.clone());
    let tag = unique("steward-test");
    let image_id = image(&s, &tag).await;
    let err = nova
        .create(&tagged(&nova, &tag, &image_id, "steward.tiny").await)
        .await
        .unwrap_err();
    match &err {
        Error::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 403, "{err}");
            assert!(message.contains("Quota exceeded"), "{message}");
        }
        other => panic!("expected Nova's refusal, got {other}"),
    }
    assert!(
        nova.list(&tag).await.unwrap().is_empty(),
        "nothing was made"
    );
    Images::new(s).delete(&image_id).await.unwrap();
}
