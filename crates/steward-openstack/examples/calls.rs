//! Times steward's client on the calls the OpenStack benchmark compares with
//! the `openstack` CLI (benches/openstack.sh): a new session's login, server
//! create until ACTIVE, show, and delete until gone; each a fresh process, as
//! the CLI is. Reads the cloud from the `OS_*` variables.
//!
//!     calls IMAGE_ID FLAVOR NAME  →  one line: login create show delete (seconds)

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_openstack::{Compute, Networks, NewServer, Session, Settings};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, flavor, name] = &args[..] else {
        eprintln!("usage: calls IMAGE_ID FLAVOR NAME");
        std::process::exit(2);
    };
    let config = Settings::from_env(&|n: &str| std::env::var(n).ok())
        .finish(Duration::from_secs(60), 3)
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let t = Instant::now();
    let session = Arc::new(Session::new(config).unwrap());
    let nova = Compute::new(session.clone());
    session.endpoint("compute").await.unwrap();
    let login = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let flavor_id = nova.flavor_id(flavor).await.unwrap();
    let id = nova
        .create(&NewServer {
            tags: vec!["steward-bench".into()],
            ..NewServer::new(name, image, &flavor_id, Networks::None)
        })
        .await
        .unwrap();
    nova.wait(&id, "ACTIVE", Duration::from_secs(300))
        .await
        .unwrap();
    let create = t.elapsed().as_secs_f64();

    let t = Instant::now();
    nova.get(&id).await.unwrap().unwrap();
    let show = t.elapsed().as_secs_f64();

    let t = Instant::now();
    nova.delete_and_wait(&id, Duration::from_secs(300))
        .await
        .unwrap();
    let delete = t.elapsed().as_secs_f64();
    println!("{login:.3} {create:.3} {show:.3} {delete:.3}");
}
