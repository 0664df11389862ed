//! The state store against a real SQLite file in a temp dir.

use steward_state::*;

fn result(check: &str, ts: i64, status: Status, ms: i64) -> ResultRow {
    ResultRow {
        check: check.into(),
        ts,
        status,
        duration_us: ms * 1000,
        error: (status == Status::Fail).then(|| "boom".into()),
        observed: serde_json::value::RawValue::from_string(r#"{"status":200}"#.into()).ok(),
    }
}

fn event(ts: i64, kind: &str, subject: &str) -> NewEvent {
    NewEvent {
        ts,
        kind: kind.into(),
        subject: subject.into(),
        severity: "info".into(),
        message: format!("{subject} {kind}"),
        data: serde_json::json!({}),
    }
}

const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000;

#[test]
fn results_roll_up_and_uptime_counts_warn_as_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut rows = Vec::new();
    for i in 0..60 {
        let status = match i % 10 {
            0 => Status::Fail,
            1 => Status::Warn,
            _ => Status::Pass,
        };
        rows.push(result("api", T0 + i * 10_000, status, 10 + i));
    }
    store.write_batch(&rows, &[], &[]).unwrap();
    let minutes = store.series("api", T0, T0 + 3_600_000, false).unwrap();
    assert_eq!(minutes.len(), 10, "60 results at 10s = 10 minute buckets");
    assert_eq!(minutes.iter().map(|b| b.n).sum::<i64>(), 60);
    assert_eq!(minutes[0].fail, 1);
    assert_eq!(minutes[0].max_ms, 15.0);
    let hours = store.series("api", T0, T0 + 3_600_000, true).unwrap();
    assert_eq!(hours.len(), 1);
    assert_eq!((hours[0].pass, hours[0].warn, hours[0].fail), (48, 6, 6));
    let up = store.uptime_all(T0 + 10 * 60_000).unwrap();
    let api = up["api"];
    assert_eq!(api.h1, Some(54.0 / 60.0));
    assert_eq!(api.d30, Some(54.0 / 60.0));
    let raw = store.results("api", T0, T0 + 3_600_000, 5).unwrap();
    assert_eq!(raw.len(), 5);
    assert!(raw[0].ts > raw[1].ts, "newest first");
}

#[test]
fn state_and_events_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let st = CheckStateRow {
            check: "db".into(),
            health: Health::Down,
            since: T0,
            consecutive_failures: 3,
            consecutive_successes: 0,
            last: Some(result("db", T0, Status::Fail, 5)),
        };
        let ids = store
            .write_batch(
                &[result("db", T0, Status::Fail, 5)],
                &[st],
                &[event(T0, "check.down", "db")],
            )
            .unwrap();
        assert_eq!(ids.len(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    let states = store.check_states().unwrap();
    assert_eq!(states["db"].health, Health::Down);
    assert_eq!(states["db"].consecutive_failures, 3);
    assert_eq!(
        states["db"].last.as_ref().unwrap().error.as_deref(),
        Some("boom")
    );
    let ev = store
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].event.kind, "check.down");
}

#[test]
fn event_log_pages_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for i in 0..25 {
        let kind = if i % 2 == 0 {
            "check.down"
        } else {
            "alert.sent"
        };
        store.append_event(&event(T0 + i, kind, "x")).unwrap();
    }
    let newest = store
        .events(&EventQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest.len(), 10);
    assert!(newest[0].id > newest[9].id);
    let older = store
        .events(&EventQuery {
            limit: 100,
            before: Some(newest[9].id),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(older.len(), 15);
    let follow = store
        .events(&EventQuery {
            limit: 100,
            after: Some(newest[1].id),
            kind_prefix: Some("check.".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        follow
            .iter()
            .all(|e| e.event.kind == "check.down" && e.id > newest[1].id)
    );
    assert_eq!(follow.len(), 1);
}

#[test]
fn prune_drops_only_what_retention_allows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let day = 86_400_000;
    store
        .write_batch(
            &[
                result("a", T0, Status::Pass, 1),
                result("a", T0 + 3 * day, Status::Pass, 1),
            ],
            &[],
            &[event(T0, "old", "a"), event(T0 + 3 * day, "new", "a")],
        )
        .unwrap();
    let now = T0 + 3 * day + 1000;
    let keep = RetentionMs {
        raw: 2 * day,
        minute: 2 * day,
        hour: 30 * day,
        day: 400 * day,
        events: 2 * day,
    };
    let removed = store.prune(now, keep).unwrap();
    assert_eq!(removed, 3, "one raw row, one minute bucket, one event");
    assert_eq!(store.results("a", 0, i64::MAX, 10).unwrap().len(), 1);
    assert_eq!(
        store.series("a", 0, i64::MAX, true).unwrap().len(),
        2,
        "hour buckets kept"
    );
}

#[cfg(unix)]
#[test]
fn state_dir_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nested/state");
    let store = Store::open(&state).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        Store::open(dir.path()).unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let err = Store::open(dir.path()).err().expect("must refuse");
    assert!(
        err.to_string()
            .contains("newer than this steward understands"),
        "{err}"
    );
}

#[test]
fn tokens_are_stored_only_as_hashes_and_revocation_is_immediate() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let secret = store.create_token("ci", Scope::Read, T0).unwrap();
    assert!(secret.starts_with("stw_") && secret.len() == 68);
    let other = store.create_token("ops", Scope::Operate, T0).unwrap();
    assert_ne!(secret, other);
    assert!(matches!(
        store.create_token("ci", Scope::Read, T0),
        Err(TokenError::Exists(_))
    ));
    assert!(matches!(
        store.create_token("bad name", Scope::Read, T0),
        Err(TokenError::BadName)
    ));
    let t = store
        .authenticate(&token_hash(&secret), T0 + 1)
        .unwrap()
        .expect("valid token");
    assert_eq!((t.name.as_str(), t.scope), ("ci", Scope::Read));
    assert!(
        store
            .authenticate(&token_hash("stw_wrong"), T0)
            .unwrap()
            .is_none()
    );
    assert!(store.revoke_token("ci", T0 + 2).unwrap());
    assert!(
        !store.revoke_token("ci", T0 + 3).unwrap(),
        "already revoked"
    );
    assert!(
        store
            .authenticate(&token_hash(&secret), T0 + 4)
            .unwrap()
            .is_none()
    );
    let list = store.tokens().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].revoked, Some(T0 + 2));
    drop(store);
    // The secret appears nowhere in the database files.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        for s in [&secret, &other] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "a token leaked into the state directory"
            );
        }
    }
}

/// Two processes (here: threads with their own connections) creating the same new
/// database at once all succeed, and every migration is applied once.
#[test]
fn concurrent_opens_of_a_new_database_both_succeed() {
    for _ in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = path.clone();
                std::thread::spawn(move || steward_state::Store::open(&p).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().expect("every concurrent open succeeds");
        }
        let store = steward_state::Store::open(&path).unwrap();
        store
            .append_event(&steward_state::NewEvent::now(
                "test.ok",
                "x",
                "info",
                "works".into(),
                serde_json::json!({}),
            ))
            .unwrap();
    }
}

#[test]
fn latest_event_matches_the_kind_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = steward_state::Store::open(dir.path()).unwrap();
    let ev = |kind: &str, subject: &str| {
        store
            .append_event(&steward_state::NewEvent::now(
                kind,
                subject,
                "info",
                kind.into(),
                serde_json::json!({}),
            ))
            .unwrap()
    };
    let first = ev("backup.failed", "db");
    ev("backup.failed_check", "db");
    ev("backup.failed", "other");
    let got = store.latest_event("backup.failed", "db").unwrap().unwrap();
    assert_eq!(
        got.id, first,
        "a longer kind with the same prefix, or another subject, is not it"
    );
    assert!(
        store
            .latest_event("backup.succeeded", "db")
            .unwrap()
            .is_none()
    );
}
