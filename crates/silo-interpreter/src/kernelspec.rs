//! Kernelspecs found on disk: which kernels exist and how to start them.
//!
//! A kernelspec is a directory `<dir>/<name>/kernel.json` holding `argv` (with a
//! `{connection_file}` placeholder), `language`, optional `env` and `interrupt_mode`. The
//! standard directories are scanned in order; for each [`Language`] the first spec found wins
//! (directories in the order given, names sorted within one).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::language::Language;

/// How a kernel wants to be interrupted (`interrupt_mode` in kernel.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterruptMode {
    /// SIGINT to the kernel's process group, the default.
    #[default]
    Signal,
    /// An `interrupt_request` on the control channel.
    Message,
}

/// One usable kernelspec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSpec {
    /// Directory name, e.g. `python3`.
    pub name: String,
    pub language: Language,
    /// Command line; `{connection_file}` is replaced at start.
    pub argv: Vec<String>,
    /// Extra environment the spec asks for.
    pub env: BTreeMap<String, String>,
    pub interrupt_mode: InterruptMode,
    /// The directory holding kernel.json (used to resolve a bare `python` in `argv`).
    pub dir: PathBuf,
}

#[derive(Deserialize)]
struct KernelJson {
    argv: Vec<String>,
    language: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    interrupt_mode: InterruptMode,
}

/// The standard kernelspec directories for a user whose home is `home`, most specific first
/// (as Jupyter searches them: user, then system-wide).
pub fn default_dirs(home: &Path) -> Vec<PathBuf> {
    vec![
        home.join(".local/share/jupyter/kernels"),
        PathBuf::from("/usr/local/share/jupyter/kernels"),
        PathBuf::from("/usr/share/jupyter/kernels"),
    ]
}

/// Reads every kernelspec under `dirs` and keeps the first per language. Unreadable or
/// malformed specs, and specs of languages we cannot drive, are skipped with a warning: one
/// broken kernel must not take the others down.
pub fn discover(dirs: &[PathBuf]) -> BTreeMap<Language, KernelSpec> {
    let mut found = BTreeMap::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        names.sort();
        for spec_dir in names {
            match load(&spec_dir) {
                Ok(Some(spec)) => {
                    found.entry(spec.language).or_insert(spec);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(dir = %spec_dir.display(), %err, "skipping kernelspec");
                }
            }
        }
    }
    found
}

/// Loads `<spec_dir>/kernel.json`. `Ok(None)` when the directory has none or the language is
/// not one we drive.
fn load(spec_dir: &Path) -> Result<Option<KernelSpec>, String> {
    let path = spec_dir.join("kernel.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let json: KernelJson = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if json.argv.is_empty() {
        return Err("empty argv".into());
    }
    let name = spec_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Ok(language) = json.language.parse::<Language>() else {
        tracing::info!(kernel = %name, language = %json.language, "kernel language not supported");
        return Ok(None);
    };
    Ok(Some(KernelSpec {
        name,
        language,
        argv: json.argv,
        env: json.env,
        interrupt_mode: json.interrupt_mode,
        dir: spec_dir.to_path_buf(),
    }))
}

impl KernelSpec {
    /// The argv to execute, with the connection file filled in and a bare program name
    /// resolved.
    ///
    /// ipykernel writes `"python"` as argv[0] and relies on the launcher to substitute its own
    /// interpreter. We resolve it against the prefix the spec was installed into
    /// (`<prefix>/share/jupyter/kernels/<name>` → `<prefix>/bin/python`), so a kernel
    /// installed in a venv runs that venv's Python; then against `path`; and `python`
    /// falls back to `python3`, which is all Debian ships.
    pub fn command_line(&self, connection_file: &Path, path: &str) -> Vec<String> {
        let mut argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.replace("{connection_file}", &connection_file.to_string_lossy()))
            .collect();
        if let Some(program) = argv.first_mut() {
            if !program.contains('/') {
                if let Some(found) = self.resolve(program, path) {
                    *program = found.to_string_lossy().into_owned();
                }
            }
        }
        argv
    }

    fn resolve(&self, program: &str, path: &str) -> Option<PathBuf> {
        let prefix_bin = self.dir.ancestors().nth(4).map(|p| p.join("bin"));
        let mut candidates = vec![program.to_string()];
        if program == "python" {
            candidates.push("python3".into());
        }
        for candidate in &candidates {
            let dirs = prefix_bin
                .iter()
                .cloned()
                .chain(std::env::split_paths(path));
            for dir in dirs {
                let full = dir.join(candidate);
                if is_executable(&full) {
                    return Some(full);
                }
            }
        }
        None
    }
}

/// The first executable `program` in the directories of `path`.
pub(crate) fn find_program(program: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|full| is_executable(full))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(root: &Path, name: &str, json: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("kernel.json"), json).expect("write");
        dir
    }

    #[test]
    fn discovers_first_spec_per_language() {
        let user = tempfile::tempdir().expect("tmp");
        let system = tempfile::tempdir().expect("tmp");
        write_spec(
            user.path(),
            "python3",
            r#"{"argv":["python","-m","ipykernel_launcher","-f","{connection_file}"],"language":"python"}"#,
        );
        write_spec(
            system.path(),
            "python3",
            r#"{"argv":["/usr/bin/python3","-f","{connection_file}"],"language":"python"}"#,
        );
        write_spec(
            system.path(),
            "bash",
            r#"{"argv":["python3","-m","bash_kernel","-f","{connection_file}"],"language":"bash","env":{"PS1":"$"}}"#,
        );
        write_spec(
            system.path(),
            "jslab",
            r#"{"argv":["tslab","kernel","--config-path","{connection_file}","--js"],"language":"javascript","interrupt_mode":"message"}"#,
        );
        write_spec(
            system.path(),
            "ocaml",
            r#"{"argv":["ocaml-jupyter"],"language":"ocaml"}"#,
        );
        write_spec(system.path(), "broken", "{not json");

        let specs = discover(&[user.path().to_path_buf(), system.path().to_path_buf()]);
        let langs: Vec<Language> = specs.keys().copied().collect();
        assert_eq!(
            langs,
            [Language::Python, Language::JavaScript, Language::Bash]
        );
        assert_eq!(specs[&Language::Python].argv[0], "python");
        assert_eq!(specs[&Language::Bash].env["PS1"], "$");
        assert_eq!(
            specs[&Language::JavaScript].interrupt_mode,
            InterruptMode::Message
        );
        assert_eq!(specs[&Language::Bash].interrupt_mode, InterruptMode::Signal);
    }

    #[test]
    fn command_line_fills_connection_file_and_resolves_prefix_python() {
        let prefix = tempfile::tempdir().expect("tmp");
        let bin = prefix.path().join("bin");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let python = bin.join("python");
        std::fs::write(&python, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&python, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let kernels = prefix.path().join("share/jupyter/kernels");
        let dir = write_spec(
            &kernels,
            "python3",
            r#"{"argv":["python","-m","ipykernel_launcher","-f","{connection_file}"],"language":"python"}"#,
        );
        let spec = load(&dir).expect("load").expect("spec");
        let argv = spec.command_line(Path::new("/tmp/k.json"), "/nonexistent");
        assert_eq!(
            argv,
            [
                python.to_string_lossy().as_ref(),
                "-m",
                "ipykernel_launcher",
                "-f",
                "/tmp/k.json"
            ]
        );
    }
}
