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

fn event(ts: i64, kind: EventKind, subject: &str) -> NewEvent {
    NewEvent {
        ts,
        kind,
        subject: subject.into(),
        severity: Severity::Info,
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
                &[event(T0, EventKind::CheckDown, "db")],
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
            EventKind::CheckDown
        } else {
            EventKind::AlertSent
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
            &[
                event(T0, EventKind::CheckDown, "a"),
                event(T0 + 3 * day, EventKind::CheckUp, "a"),
            ],
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

#[test]
fn prune_takes_slices_and_day_buckets_go_after_their_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let day = 86_400_000;
    // 25 results on three days long ago, one today.
    let mut rows: Vec<ResultRow> = (0..25)
        .map(|i| result("a", T0 + (i % 3) * day + i, Status::Pass, 1))
        .collect();
    rows.push(result("a", T0 + 500 * day, Status::Pass, 1));
    store.write_batch(&rows, &[], &[]).unwrap();
    let days = |store: &Store| -> i64 {
        let db = rusqlite::Connection::open(store.path()).unwrap();
        db.query_row("SELECT count(*) FROM rollups WHERE res = 86400", [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    assert_eq!(days(&store), 4);
    let now = T0 + 500 * day + 1000;
    let keep = RetentionMs {
        raw: 2 * day,
        minute: 2 * day,
        hour: 30 * day,
        day: 400 * day,
        events: 2 * day,
    };
    // One slice of 10 takes 10 raw results and the three old minute and
    // three old hour buckets (fewer than 10 each) and the three old days.
    assert_eq!(store.prune_slice(now, keep, 10).unwrap(), 10 + 3 + 3 + 3);
    assert_eq!(store.results("a", 0, i64::MAX, 100).unwrap().len(), 16);
    assert_eq!(days(&store), 1, "day buckets older than 400 days went");
    assert_eq!(store.prune_slice(now, keep, 10).unwrap(), 10);
    assert_eq!(store.prune_slice(now, keep, 10).unwrap(), 5);
    assert_eq!(store.prune_slice(now, keep, 10).unwrap(), 0);
    assert_eq!(store.results("a", 0, i64::MAX, 100).unwrap().len(), 1);
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
                EventKind::ServeStarted,
                "x",
                Severity::Info,
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
    let ev = |kind: EventKind, subject: &str| {
        store
            .append_event(&steward_state::NewEvent::now(
                kind,
                subject,
                Severity::Info,
                kind.to_string(),
                serde_json::json!({}),
            ))
            .unwrap()
    };
    let first = ev(EventKind::BackupFailed, "db");
    ev(EventKind::BackupCheckFailed, "db");
    ev(EventKind::BackupFailed, "other");
    let got = store
        .latest_event(EventKind::BackupFailed, "db")
        .unwrap()
        .unwrap();
    assert_eq!(
        got.id, first,
        "a longer kind with the same prefix, or another subject, is not it"
    );
    assert!(
        store
            .latest_event(EventKind::BackupSucceeded, "db")
            .unwrap()
            .is_none()
    );
}

/// Consumers of the log keep their place in the database: a new one has none,
/// a cursor only moves forward, and it survives reopening.
#[test]
fn event_cursors_are_durable_and_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.event_cursor("alert.ops").unwrap(), None);
        assert_eq!(store.last_event_id().unwrap(), 0);
        store.set_event_cursor("alert.ops", 7).unwrap();
        store.set_event_cursor("alert.ops", 3).unwrap();
        assert_eq!(
            store.event_cursor("alert.ops").unwrap(),
            Some(7),
            "a late, older write does not move it back"
        );
        store.set_event_cursor("alert.ops", 9).unwrap();
        store.set_event_cursor("fleet.auto_rebuild", 1).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.event_cursor("alert.ops").unwrap(), Some(9));
    assert_eq!(store.event_cursor("fleet.auto_rebuild").unwrap(), Some(1));
}

/// Following the log by kind from a cursor, with the bell rung by every write
/// (single events and batches) and kinds this build does not know passed over.
#[test]
fn followers_read_their_kinds_after_a_cursor_and_hear_the_bell() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut bell = store.event_bell();
    assert!(!bell.has_changed().unwrap());
    let a = store
        .append_event(&event(T0, EventKind::CheckDown, "db"))
        .unwrap();
    assert!(bell.has_changed().unwrap());
    assert_eq!(*bell.borrow_and_update(), a);
    store
        .append_event(&event(T0 + 1, EventKind::AlertSent, "db"))
        .unwrap();
    let ids = store
        .write_batch(
            &[],
            &[],
            &[
                event(T0 + 2, EventKind::CheckUp, "db"),
                event(T0 + 3, EventKind::BackupFailed, "files"),
            ],
        )
        .unwrap();
    assert_eq!(
        *bell.borrow_and_update(),
        ids[1],
        "a batch rings once, with its last id"
    );
    assert_eq!(store.last_event_id().unwrap(), ids[1]);
    // A kind a newer steward wrote into the same database.
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute(
            "INSERT INTO events (ts, kind, subject, severity, message, data) VALUES (1, 'future.kind', 'x', 'info', 'x', '{}')",
            [],
        )
        .unwrap();
    let got = store
        .events(&EventQuery {
            after: Some(a),
            kinds: vec![
                EventKind::CheckUp,
                EventKind::CheckDown,
                EventKind::BackupFailed,
            ],
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    let kinds: Vec<EventKind> = got.iter().map(|e| e.event.kind).collect();
    assert_eq!(kinds, [EventKind::CheckUp, EventKind::BackupFailed]);
    let all = store
        .events(&EventQuery {
            after: Some(0),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(all.len(), 4, "the unknown kind is passed over: {all:?}");
}

/// The README's table of event kinds is the code's list, name for name and
/// meaning for meaning, in the same order.
#[test]
fn readme_lists_every_event_kind() {
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
    )
    .unwrap();
    let section = readme
        .split("### Event kinds")
        .nth(1)
        .expect("README has an `Event kinds` section");
    let rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| kind |"))
        .skip(2)
        .take_while(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').splitn(2, " | ").collect();
            (
                cells[0].trim().trim_matches('`').to_string(),
                cells[1].trim().trim_end_matches(" |").trim().to_string(),
            )
        })
        .collect();
    let code: Vec<(String, String)> = EventKind::ALL
        .iter()
        .map(|(k, what)| (k.as_str().to_string(), what.to_string()))
        .collect();
    assert_eq!(rows, code);
    for (k, _) in EventKind::ALL {
        assert_eq!(EventKind::parse(k.as_str()), Some(*k));
    }
}

/// An event that cannot be written is never dropped silently: `record` counts
/// it (the counter `serve` exports) and the log is left as it was.
#[test]
fn a_failed_event_write_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.record(&event(T0, EventKind::ServeStarted, "steward"));
    assert_eq!(store.write_errors().get(), 0);
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .unwrap();
    store.record(&event(T0 + 1, EventKind::ServeStopped, "steward"));
    assert_eq!(store.write_errors().get(), 1);
    assert_eq!(store.last_event_id().unwrap(), 1);
}

fn instance_row(id: &str, state: InstanceState, reason: &str) -> InstanceRow {
    InstanceRow {
        id: id.into(),
        service: "api".into(),
        digest: "sha256:1".into(),
        state,
        addr: "127.0.0.1:1".into(),
        provider: serde_json::json!({"dir": "/nowhere"}),
        created_ms: T0,
        ready_ms: None,
        updated_ms: T0,
        reason: Some(reason.into()),
    }
}

/// What follows a drain is recorded with it; a database from before the
/// column (the verb at the start of the reason) is migrated; a state this
/// steward does not know is an error that says so, not a guess.
#[test]
fn instance_states_round_trip_migrate_and_refuse_the_unknown() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        for (id, state) in [
            ("a", InstanceState::Draining(AfterDrain::Park)),
            ("b", InstanceState::Draining(AfterDrain::Destroy)),
            ("c", InstanceState::Parked),
        ] {
            store
                .fleet_put_instance(&instance_row(id, state, "whatever"))
                .unwrap();
        }
        let got: Vec<_> = store
            .fleet_instances(None)
            .unwrap()
            .into_iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(
            got,
            [
                InstanceState::Draining(AfterDrain::Park),
                InstanceState::Draining(AfterDrain::Destroy),
                InstanceState::Parked
            ]
        );
    }
    // Back to the version-5 shape: no drain column (the verb in the reason),
    // the local provider's pid, start time and directory as columns.
    {
        let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(
            "UPDATE fleet_instance SET reason = 'park: replaced by a new version' WHERE id = 'a';
             UPDATE fleet_instance SET reason = 'destroy: scaled in' WHERE id = 'b';
             ALTER TABLE fleet_instance DROP COLUMN after_drain;
             ALTER TABLE fleet_instance DROP COLUMN provider;
             ALTER TABLE fleet_instance ADD COLUMN pid INTEGER;
             ALTER TABLE fleet_instance ADD COLUMN pid_start INTEGER;
             ALTER TABLE fleet_instance ADD COLUMN dir TEXT NOT NULL DEFAULT '';
             UPDATE fleet_instance SET pid = 4242, pid_start = 77, dir = '/srv/a' WHERE id = 'a';
             DROP TABLE leases;
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let rows = store.fleet_instances(None).unwrap();
    assert_eq!(
        rows[0].provider,
        serde_json::json!({"dir": "/srv/a", "pid": 4242, "pid_start": 77}),
        "the local provider's columns become its record"
    );
    let got: Vec<_> = rows.into_iter().map(|r| (r.id, r.state)).collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), InstanceState::Draining(AfterDrain::Park)),
            (
                "b".to_string(),
                InstanceState::Draining(AfterDrain::Destroy)
            ),
            ("c".to_string(), InstanceState::Parked)
        ]
    );
    rusqlite::Connection::open(store.path())
        .unwrap()
        .execute(
            "UPDATE fleet_instance SET state = 'hibernating' WHERE id = 'c'",
            [],
        )
        .unwrap();
    let err = store.fleet_instances(None).unwrap_err().to_string();
    assert!(
        err.contains("unknown instance state `hibernating`"),
        "{err}"
    );
}

/// A lease has one holder at a time: renewable by it, free for another only
/// once expired or given back; two handles on one database (two stewards)
/// agree.
#[test]
fn a_lease_has_one_holder_until_it_expires_or_is_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(dir.path()).unwrap();
    let b = Store::open(dir.path()).unwrap();
    let t = T0;
    assert!(a.acquire("leader", "a", 1_000, t).unwrap());
    assert!(
        !b.acquire("leader", "b", 1_000, t + 10).unwrap(),
        "held by a"
    );
    assert!(
        a.acquire("leader", "a", 1_000, t + 500).unwrap(),
        "a renews"
    );
    assert!(
        !b.acquire("leader", "b", 1_000, t + 1_200).unwrap(),
        "renewed until t+1500"
    );
    assert_eq!(b.holder("leader", t + 1_200).unwrap().unwrap().holder, "a");
    assert!(
        b.acquire("leader", "b", 1_000, t + 1_500).unwrap(),
        "expired: b takes it"
    );
    assert!(
        !a.acquire("leader", "a", 1_000, t + 1_600).unwrap(),
        "a lost it"
    );
    a.release("leader", "a").unwrap();
    assert_eq!(
        a.holder("leader", t + 1_600).unwrap().unwrap().holder,
        "b",
        "only the holder gives it back"
    );
    b.release("leader", "b").unwrap();
    assert!(a.holder("leader", t + 1_600).unwrap().is_none());
    assert!(
        a.acquire("leader", "a", 1_000, t + 1_700).unwrap(),
        "free again"
    );
    assert!(
        a.acquire("other", "b", 1_000, t + 1_700).unwrap(),
        "leases are by name"
    );
}
