//! Paths inside a template's tree, resolved as the sandbox will see them.
//!
//! The tree comes from images and Dockerfile steps: untrusted. silo reads and writes it
//! as root on the host, so `root.join(path)` would let a symlink in it (`etc -> /etc`,
//! `x -> ../../..`) take a write out of the tree and onto the host. Here every symlink
//! is followed as inside the sandbox: an absolute target starts again at `root`, and `..`
//! stops at `root` (the kernel's `RESOLVE_IN_ROOT`). Builds run one at a time and nothing
//! else writes the tree while silo does, so resolving first and acting on the resolved
//! path after is not a race.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before it fails as a loop, as Linux does.
const MAX_SYMLINKS: usize = 40;

/// `path` (absolute or not, taken from `root`) as a host path inside `root`, every
/// symlink followed, the last component's included. Components that do not exist are
/// kept as they are, so the result may name something to be made.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut resolved: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&name);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("too many levels of symbolic links at {}", path.display()),
                    ));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for part in components(&target).rev() {
                    pending.push_front(part);
                }
            }
            Ok(_) => resolved.push(name),
            Err(err) if err.kind() == io::ErrorKind::NotFound => resolved.push(name),
            Err(err) => return Err(err),
        }
    }
    Ok(join(root, &resolved))
}

/// `path` inside `root` with its parent resolved ([`resolve`]) and its last component
/// kept as it is, not followed: where to make, replace or remove that entry itself.
/// `None` for the root itself (nothing to name).
pub fn resolve_parent(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    let mut parts: Vec<OsString> = components(path).collect();
    // `a/b/..` names `a`: settle the dots of the last component first.
    while parts.last().is_some_and(|last| last == "..") {
        let parent = resolve(root, &parts.iter().collect::<PathBuf>())?;
        parts = components(parent.strip_prefix(root).unwrap_or(Path::new(""))).collect();
    }
    let Some(name) = parts.pop() else {
        return Ok(None);
    };
    let parent = resolve(root, &parts.iter().collect::<PathBuf>())?;
    Ok(Some(parent.join(name)))
}

/// The names of `path`, without its root and `.` components; `..` kept.
fn components(path: &Path) -> impl DoubleEndedIterator<Item = OsString> + '_ {
    path.components().filter_map(|part| match part {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn join(root: &Path, names: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(names);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/run")).unwrap();
        std::fs::create_dir_all(dir.path().join("root/var")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        dir
    }

    #[test]
    fn absolute_symlinks_start_again_at_the_root() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("/run", root.join("var/run")).unwrap();
        symlink("/", root.join("escape")).unwrap();
        assert_eq!(
            resolve(&root, Path::new("/var/run/app/pid")).unwrap(),
            root.join("run/app/pid")
        );
        assert_eq!(
            resolve(&root, Path::new("escape/etc/passwd")).unwrap(),
            root.join("etc/passwd")
        );
    }

    #[test]
    fn dots_and_relative_symlinks_stop_at_the_root() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("../../../outside", root.join("var/up")).unwrap();
        assert_eq!(
            resolve(&root, Path::new("../../outside/x")).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(
            resolve(&root, Path::new("var/up/x")).unwrap(),
            root.join("outside/x")
        );
        assert_eq!(resolve(&root, Path::new("/")).unwrap(), root);
    }

    #[test]
    fn the_last_component_of_a_parent_resolution_is_not_followed() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("/run", root.join("etc")).unwrap();
        symlink("/etc/passwd", root.join("var/passwd")).unwrap();
        assert_eq!(
            resolve_parent(&root, Path::new("/etc/passwd")).unwrap(),
            Some(root.join("run/passwd")),
            "through the symlinked parent, inside the root"
        );
        assert_eq!(
            resolve_parent(&root, Path::new("var/passwd")).unwrap(),
            Some(root.join("var/passwd")),
            "the link itself, to be replaced"
        );
        assert_eq!(
            resolve_parent(&root, Path::new("var/run/..")).unwrap(),
            Some(root.join("var"))
        );
        assert_eq!(resolve_parent(&root, Path::new("/")).unwrap(), None);
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let dir = tree();
        let root = dir.path().join("root");
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert!(resolve(&root, Path::new("a/x")).is_err());
    }
}
