//! Template rendering and diff display.

use std::path::Path;

use steward_spec::{ConvergeSet, Resolver, ResourceKind, Text};

use crate::facts::Facts;

/// Shown instead of a diff of content that comes from a secret.
pub(crate) const HIDDEN: &str =
    "(content hidden: it comes from a secret reference; `--show-secrets` shows it)\n";

/// The set's templates, compiled once per run.
pub(crate) struct Templates {
    env: minijinja::Environment<'static>,
    /// Resource id → template name in `env`.
    names: std::collections::BTreeMap<String, String>,
}

impl Templates {
    pub(crate) fn new(set: &ConvergeSet) -> Templates {
        let mut env = steward_spec::template_env();
        let mut names = std::collections::BTreeMap::new();
        for r in &set.resources {
            if let ResourceKind::Template { source, text, .. } = &r.kind {
                // Compiled at validation already; a failure here surfaces at render.
                let name = template_name(&r.id, source);
                let _ = env.add_template_owned(name.clone(), text.clone());
                names.insert(r.id.clone(), name);
            }
        }
        Templates { env, names }
    }

    /// Renders one template resource. Variables: the set's `vars` overridden by the
    /// resource's, at the top level and as `vars`; facts as `facts`. Returns the text
    /// and whether a secret reference went into it.
    pub(crate) fn render(
        &self,
        id: &str,
        set_vars: &serde_json::Map<String, serde_json::Value>,
        vars: &serde_json::Map<String, serde_json::Value>,
        facts: &Facts,
        resolver: &dyn Resolver,
    ) -> Result<(String, bool), String> {
        let mut merged = set_vars.clone();
        merged.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut secret = false;
        let mut merged = serde_json::Value::Object(merged);
        resolve_refs(&mut merged, resolver, &mut secret)?;
        let mut ctx = merged.as_object().cloned().unwrap_or_default();
        ctx.insert("vars".into(), merged);
        ctx.insert(
            "facts".into(),
            serde_json::to_value(facts).map_err(|e| e.to_string())?,
        );
        let name = self
            .names
            .get(id)
            .ok_or_else(|| format!("template for `{id}` did not compile"))?;
        let tmpl = self.env.get_template(name).map_err(|e| e.to_string())?;
        tmpl.render(minijinja::Value::from(minijinja::value::Serde(&ctx)))
            .map(|s| (s, secret))
            .map_err(|e| {
                let file = name.split('#').next().unwrap_or(name);
                let mut msg = format!(
                    "template `{file}` line {}: {}",
                    e.line().unwrap_or(0),
                    e.detail().unwrap_or(&e.kind().to_string())
                );
                if e.kind() == minijinja::ErrorKind::UndefinedError {
                    msg.push_str(" (an undefined variable; set it in `vars`)");
                }
                msg
            })
    }
}

fn template_name(id: &str, source: &Path) -> String {
    format!("{}#{id}", source.display())
}

/// Replaces `${env:…}`/`${file:…}` strings with their values, noting that one was used.
fn resolve_refs(
    v: &mut serde_json::Value,
    resolver: &dyn Resolver,
    secret: &mut bool,
) -> Result<(), String> {
    match v {
        serde_json::Value::String(s) => {
            let t = Text::new(s.clone());
            if t.has_references() {
                *secret = true;
                *s = t
                    .resolve(resolver)
                    .map_err(|e| e.to_string())?
                    .expose()
                    .to_string();
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                resolve_refs(x, resolver, secret)?;
            }
        }
        serde_json::Value::Object(o) => {
            for x in o.values_mut() {
                resolve_refs(x, resolver, secret)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A unified diff of two versions of a file, or a size note for binary content.
pub(crate) fn unified(path: &Path, old: &[u8], new: &[u8]) -> Option<String> {
    if old == new {
        return None;
    }
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(a), Ok(b)) => {
            let p = path.display().to_string();
            Some(
                similar::TextDiff::from_lines(a, b)
                    .unified_diff()
                    .context_radius(3)
                    .header(&p, &p)
                    .to_string(),
            )
        }
        _ => Some(format!(
            "binary content differs ({} → {} bytes)\n",
            old.len(),
            new.len()
        )),
    }
}
