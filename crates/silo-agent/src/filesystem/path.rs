//! Resolving a request's path for a user: `~` and relative paths start at the user's
//! home, and `.`/`..` are folded lexically so the result is absolute and clean.
//!
//! There is no jail to escape: the sandbox is the boundary, and the agent may touch any
//! path in it. Resolution only makes paths predictable (and rejects NUL bytes, which the
//! kernel would reject anyway, with a clearer message).

use std::path::{Component, Path, PathBuf};

use crate::error::Error;

pub fn resolve(raw: &str, home: &Path) -> Result<PathBuf, Error> {
    if raw.contains('\0') {
        return Err(Error::InvalidArgument("path contains a NUL byte".into()));
    }
    let joined = if raw == "~" {
        home.to_path_buf()
    } else if let Some(rest) = raw.strip_prefix("~/") {
        home.join(rest)
    } else if raw.starts_with('/') {
        PathBuf::from(raw)
    } else {
        home.join(raw)
    };
    Ok(normalize(&joined))
}

/// Fold `.` and `..` without touching the filesystem; `..` at the root stays at the root.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(raw: &str) -> String {
        resolve(raw, Path::new("/home/user"))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn relative_and_tilde_start_at_home() {
        assert_eq!(r("a.txt"), "/home/user/a.txt");
        assert_eq!(r(""), "/home/user");
        assert_eq!(r("~"), "/home/user");
        assert_eq!(r("~/x/y"), "/home/user/x/y");
        assert_eq!(r("/etc/hosts"), "/etc/hosts");
        // `~user` is not expanded (envd does not either): it is a relative name.
        assert_eq!(r("~other"), "/home/user/~other");
    }

    #[test]
    fn dots_fold_and_cannot_climb_above_root() {
        assert_eq!(r("a/./b/../c"), "/home/user/a/c");
        assert_eq!(r("../../../../etc/passwd"), "/etc/passwd");
        assert_eq!(r("/../.."), "/");
        assert_eq!(r("//a//b/"), "/a/b");
    }

    #[test]
    fn nul_is_rejected() {
        assert!(matches!(
            resolve("a\0b", Path::new("/")),
            Err(Error::InvalidArgument(_))
        ));
    }
}
