//! `steward token create|list|revoke`: API tokens for `auth = "token"`.

use std::path::Path;

use crate::{exit, load_spec, table};
use steward_state::{EventKind, EventLog, NewEvent, Scope, Store, TokenError, Tokens, now_ms};

pub(crate) enum Action {
    Create { name: String, scope: Scope },
    List { json: bool },
    Revoke { name: String },
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

fn event(kind: EventKind, message: String, name: &str) -> NewEvent {
    NewEvent::now(
        kind,
        "token",
        steward_state::Severity::Info,
        message,
        serde_json::json!({ "token": name }),
    )
}

pub(crate) fn run(spec_path: &Path, action: Action) -> u8 {
    let spec = match load_spec(spec_path) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let store = match Store::open(&spec.settings.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match action {
        Action::Create { name, scope } => match store.create_token(&name, scope, now_ms()) {
            Ok(secret) => {
                store.record(&event(
                    EventKind::TokenCreated,
                    format!("token `{name}` ({}) created", scope.as_str()),
                    &name,
                ));
                println!("{secret}");
                eprintln!(
                    "Token `{name}` with scope `{}` created. It is shown only now: store it in your secret manager.",
                    scope.as_str()
                );
                exit::OK
            }
            Err(e @ (TokenError::Exists(_) | TokenError::BadName)) => {
                eprintln!("error: {e}");
                exit::USAGE
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILED
            }
        },
        Action::List { json } => match store.tokens() {
            Ok(list) if json => {
                println!("{}", serde_json::to_string_pretty(&list).expect("JSON"));
                exit::OK
            }
            Ok(list) => {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.scope.as_str().into(),
                            when(Some(t.created)),
                            when(t.last_used),
                            if t.revoked.is_some() {
                                format!("revoked {}", when(t.revoked))
                            } else {
                                "active".into()
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table::render(&["NAME", "SCOPE", "CREATED", "LAST USED", "STATE"], &rows)
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILED
            }
        },
        Action::Revoke { name } => match store.revoke_token(&name, now_ms()) {
            Ok(true) => {
                store.record(&event(
                    EventKind::TokenRevoked,
                    format!("token `{name}` revoked"),
                    &name,
                ));
                println!("Token `{name}` revoked; requests with it are refused from now on.");
                exit::OK
            }
            Ok(false) => {
                eprintln!("error: no active token named `{name}` (see `steward token list`)");
                exit::USAGE
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILED
            }
        },
    }
}
