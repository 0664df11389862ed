//! `steward alert test [CHANNEL]`: a test notice through one alert channel or
//! all of them, the same way a real notice goes (same payloads, same client),
//! so a new channel is proven before it is needed.

use std::path::Path;
use std::sync::Arc;

use steward_alert::{Notice, NoticeKind};
use steward_spec::OsResolver;
use steward_state::Health;

use crate::exit;

pub(crate) fn test(spec_path: &Path, channel: Option<&str>) -> u8 {
    let spec = match crate::load_spec(spec_path) {
        Ok(s) => s,
        Err(c) => return c,
    };
    if spec.alerts.is_empty() {
        eprintln!("error: the spec has no alert channel");
        eprintln!(
            "help: add one, e.g. [alert.team] with type = \"slack\" and url = \"${{env:SLACK_WEBHOOK_URL}}\", then run this again"
        );
        return exit::USAGE;
    }
    let chosen: Vec<&steward_spec::Alert> = match channel {
        None => spec.alerts.values().collect(),
        Some(name) => match spec.alerts.get(name) {
            Some(a) => vec![a],
            None => {
                let names: Vec<&str> = spec.alerts.keys().map(String::as_str).collect();
                eprintln!("error: no alert channel `{name}`");
                match steward_spec::did_you_mean(name, names.iter().copied()) {
                    Some(s) => eprintln!("help: did you mean `{s}`?"),
                    None => eprintln!("help: the channels are: {}", names.join(", ")),
                }
                return exit::USAGE;
            }
        },
    };
    let sender = steward_alert::Sender::new(Arc::new(OsResolver));
    let now = chrono::Utc::now().timestamp_millis();
    let rt = crate::runtime();
    let mut code = exit::OK;
    for a in chosen {
        let notice = Notice {
            kind: NoticeKind::Test,
            check: a.name.clone(),
            health: Health::Up,
            previous: Health::Up,
            since: now,
            error: None,
            event_id: None,
            app: spec.settings.name.clone(),
        };
        match rt.block_on(sender.send(&a.channel, &notice)) {
            Ok(()) => println!("{}: test notice sent", a.name),
            Err(e) => {
                eprintln!("error: {}: the test notice was not delivered: {e}", a.name);
                code = exit::FAILED;
            }
        }
    }
    code
}
