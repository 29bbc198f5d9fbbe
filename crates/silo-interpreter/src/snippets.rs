//! Code we run inside kernels on the user's behalf, per language: setting and removing
//! environment variables, and the Python set-up that adds E2B's extra formats.
//!
//! Values are embedded as JSON string literals, which are valid string literals in Python,
//! JavaScript/TypeScript and R alike, so no value can break out of its quotes. Bash gets
//! single quotes with `'` escaped.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::language::Language;

/// Runs once in every new Python kernel (silently): registers formatters that add `e2b/data`
/// to pandas DataFrames and `e2b/chart` to matplotlib figures, without importing either.
pub const PYTHON_SETUP: &str = include_str!("python_setup.py");

/// Code that sets `vars` in the kernel's environment, or `None` when there is nothing to do
/// or the language has no way to (Java).
pub fn set_env(language: Language, vars: &BTreeMap<String, String>) -> Option<String> {
    if vars.is_empty() {
        return None;
    }
    let object = || {
        Value::from(serde_json::Map::from_iter(
            vars.iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str()))),
        ))
        .to_string()
    };
    match language {
        Language::Python => Some(format!("__import__('os').environ.update({})", object())),
        Language::JavaScript | Language::TypeScript => {
            Some(format!("Object.assign(process.env, {});", object()))
        }
        Language::Bash => {
            let lines: Vec<String> = vars
                .iter()
                .filter(|(k, _)| bash_name(k))
                .map(|(k, v)| format!("export {k}={}", bash_quote(v)))
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        }
        Language::R => {
            let args: Vec<String> = vars
                .iter()
                .map(|(k, v)| format!("{} = {}", r_name(k), json_str(v)))
                .collect();
            Some(format!("invisible(Sys.setenv({}))", args.join(", ")))
        }
        Language::Java => None,
    }
}

/// Code that removes `names` from the kernel's environment.
pub fn unset_env(language: Language, names: &[&String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let list = || Value::from(names.iter().map(|n| n.as_str()).collect::<Vec<_>>()).to_string();
    match language {
        Language::Python => Some(format!(
            "(lambda e, ks: [e.pop(k, None) for k in ks])(__import__('os').environ, {})",
            list()
        )),
        Language::JavaScript | Language::TypeScript => Some(format!(
            "for (const k of {}) {{ delete process.env[k]; }}",
            list()
        )),
        Language::Bash => {
            let valid: Vec<&str> = names
                .iter()
                .filter(|n| bash_name(n))
                .map(|n| n.as_str())
                .collect();
            (!valid.is_empty()).then(|| format!("unset {}", valid.join(" ")))
        }
        Language::R => Some(format!("invisible(Sys.unsetenv({}))", r_vector(names))),
        Language::Java => None,
    }
}

/// Code that brings the kernel from the environment `before` to `after`, for the variables
/// either mentions: changed and new ones are set, vanished ones removed.
pub fn change_env(
    language: Language,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Option<String> {
    let set: BTreeMap<String, String> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let parts: Vec<String> = [set_env(language, &set), unset_env(language, &removed)]
        .into_iter()
        .flatten()
        .collect();
    (!parts.is_empty()).then(|| parts.join("\n"))
}

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// Only names bash can export; others are skipped rather than breaking the snippet.
fn bash_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn bash_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// An R argument name: backquoted, so any variable name is syntactically valid.
fn r_name(name: &str) -> String {
    format!("`{}`", name.replace('\\', r"\\").replace('`', r"\`"))
}

fn r_vector(names: &[&String]) -> String {
    let items: Vec<String> = names.iter().map(|n| json_str(n)).collect();
    format!("c({})", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn python_and_js_embed_values_as_json_literals() {
        let v = vars(&[("A", "x'\"\n\\y")]);
        assert_eq!(
            set_env(Language::Python, &v).as_deref(),
            Some(r#"__import__('os').environ.update({"A":"x'\"\n\\y"})"#)
        );
        assert_eq!(
            set_env(Language::TypeScript, &v).as_deref(),
            Some(r#"Object.assign(process.env, {"A":"x'\"\n\\y"});"#)
        );
        let a = "A".to_string();
        assert_eq!(
            unset_env(Language::JavaScript, &[&a]).as_deref(),
            Some(r#"for (const k of ["A"]) { delete process.env[k]; }"#)
        );
    }

    #[test]
    fn bash_quotes_values_and_skips_unexportable_names() {
        let v = vars(&[("GOOD", "it's"), ("bad-name", "x"), ("_ok2", "")]);
        assert_eq!(
            set_env(Language::Bash, &v).as_deref(),
            Some("export GOOD='it'\\''s'\nexport _ok2=''")
        );
        let (good, bad) = ("GOOD".to_string(), "1BAD".to_string());
        assert_eq!(
            unset_env(Language::Bash, &[&good, &bad]).as_deref(),
            Some("unset GOOD")
        );
        assert_eq!(unset_env(Language::Bash, &[&bad]), None);
    }

    #[test]
    fn r_and_java() {
        let v = vars(&[("K", "v")]);
        assert_eq!(
            set_env(Language::R, &v).as_deref(),
            Some(r#"invisible(Sys.setenv(`K` = "v"))"#)
        );
        assert_eq!(set_env(Language::Java, &v), None);
    }

    #[test]
    fn change_env_sets_changed_and_removes_vanished() {
        let before = vars(&[("KEEP", "1"), ("CHANGE", "old"), ("GONE", "x")]);
        let after = vars(&[("KEEP", "1"), ("CHANGE", "new"), ("NEW", "n")]);
        assert_eq!(
            change_env(Language::Bash, &before, &after).as_deref(),
            Some("export CHANGE='new'\nexport NEW='n'\nunset GONE")
        );
        assert_eq!(change_env(Language::Python, &after, &after), None);
        assert_eq!(set_env(Language::Python, &BTreeMap::new()), None);
    }
}
