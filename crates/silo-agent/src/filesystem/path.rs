//! Resolving a request's path for a user, as envd does: an empty path is `/init`'s default
//! workdir (or the home), `~` and relative paths start at the user's home, `~name` is
//! refused, and `.`/`..` are folded lexically so the result is absolute and clean.
//!
//! There is no jail to escape: the sandbox is the boundary, and the agent may touch any
//! path in it. Resolution only makes paths predictable (and rejects NUL bytes, which the
//! kernel would reject anyway, with a clearer message).

use std::path::{Component, Path, PathBuf};

use crate::error::Error;

/// `raw` as an absolute, clean path, for a user whose home is `home`. `~\\x`, like `~/x`,
/// starts at the home, as with envd (there `\\` is a separator too).
pub fn resolve(raw: &str, home: &Path, default_workdir: Option<&Path>) -> Result<PathBuf, Error> {
    let default;
    let raw = match default_workdir {
        Some(dir) if raw.is_empty() => {
            default = dir.to_string_lossy();
            &default
        }
        _ => raw,
    };
    if raw.contains('\0') {
        return Err(Error::InvalidArgument("path contains a NUL byte".into()));
    }
    let joined = match raw.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with(['/', '\\']) => {
            home.join(rest.trim_start_matches('/'))
        }
        Some(_) => {
            return Err(Error::InvalidArgument(format!(
                "cannot expand {raw:?}: only the user's own home (~) is"
            )))
        }
        // An absolute path replaces the home.
        None => home.join(raw),
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
        resolve(raw, Path::new("/home/user"), None)
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
        assert_eq!(r("x/~other"), "/home/user/x/~other");
    }

    #[test]
    fn another_users_home_is_refused() {
        let err = resolve("~other/x", Path::new("/home/user"), None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }

    #[test]
    fn an_empty_path_is_the_default_workdir() {
        let home = Path::new("/home/user");
        let resolve = |raw, default: &str| resolve(raw, home, Some(Path::new(default))).unwrap();
        assert_eq!(resolve("", "/srv/app"), Path::new("/srv/app"));
        assert_eq!(resolve("", "~/app"), Path::new("/home/user/app"));
        // Only an empty path: a relative one is still the home's.
        assert_eq!(resolve("a.txt", "/srv/app"), Path::new("/home/user/a.txt"));
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
            resolve("a\0b", Path::new("/"), None),
            Err(Error::InvalidArgument(_))
        ));
    }
}
