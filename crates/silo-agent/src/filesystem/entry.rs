//! `EntryInfo` for a path: type, size, Go-style mode and permission string, owner and
//! group names, modification time, symlink target and `user.e2b.*` metadata.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use silo_protocol::envd::{EntryInfo, FileType};

use crate::error::Error;
use crate::users::Users;

/// The xattr namespace file metadata lives in.
pub const METADATA_PREFIX: &str = "user.e2b.";

/// Go's `os.FileMode` type bits and their `String()` letters, high bit first.
const GO_MODE_LETTERS: &[(u32, char)] = &[
    (1 << 31, 'd'), // directory
    (1 << 30, 'a'), // append-only
    (1 << 29, 'l'), // exclusive
    (1 << 28, 'T'), // temporary
    (1 << 27, 'L'), // symlink
    (1 << 26, 'D'), // device
    (1 << 25, 'p'), // named pipe
    (1 << 24, 'S'), // socket
    (1 << 23, 'u'), // setuid
    (1 << 22, 'g'), // setgid
    (1 << 21, 'c'), // char device
    (1 << 20, 't'), // sticky
];

/// Convert a Unix `st_mode` to Go's `os.FileMode` bits.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & 0o777;
    m |= match st_mode & libc::S_IFMT {
        libc::S_IFDIR => 1 << 31,
        libc::S_IFLNK => 1 << 27,
        libc::S_IFIFO => 1 << 25,
        libc::S_IFSOCK => 1 << 24,
        libc::S_IFBLK => 1 << 26,
        libc::S_IFCHR => (1 << 26) | (1 << 21),
        _ => 0,
    };
    if st_mode & libc::S_ISUID != 0 {
        m |= 1 << 23;
    }
    if st_mode & libc::S_ISGID != 0 {
        m |= 1 << 22;
    }
    if st_mode & libc::S_ISVTX != 0 {
        m |= 1 << 20;
    }
    m
}

/// Go's `FileMode.String()`: type letters (or `-`), then `rwxrwxrwx`.
pub fn permissions_string(go_mode: u32) -> String {
    let mut s: String = GO_MODE_LETTERS
        .iter()
        .filter(|(bit, _)| go_mode & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    if s.is_empty() {
        s.push('-');
    }
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if go_mode & (1 << (8 - i)) != 0 {
            c
        } else {
            '-'
        });
    }
    s
}

fn file_type(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_dir() {
        FileType::Directory
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::File
    }
}

fn rfc3339(meta: &Metadata) -> Option<String> {
    let t = chrono::DateTime::from_timestamp(meta.mtime(), meta.mtime_nsec() as u32)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

pub(super) fn cpath(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument("path contains a NUL byte".into()))
}

/// The `user.e2b.*` xattrs of `path` (not following symlinks), prefix stripped. A
/// filesystem without xattr support simply has no metadata.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let c = cpath(path)?;
    let mut out = BTreeMap::new();
    // SAFETY: a null buffer with size 0 asks for the needed size.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size <= 0 {
        return Ok(out);
    }
    let mut names = vec![0u8; size as usize];
    // SAFETY: names is valid for names.len() bytes.
    let size = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if size <= 0 {
        return Ok(out);
    }
    names.truncate(size as usize);
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Some(key) = name.strip_prefix(METADATA_PREFIX.as_bytes()) else {
            continue;
        };
        let cname = CString::new(name).expect("split on NUL leaves no NUL");
        let mut value = vec![0u8; 4096];
        // SAFETY: value is valid for value.len() bytes.
        let n = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if n >= 0 {
            value.truncate(n as usize);
            out.insert(
                String::from_utf8_lossy(key).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }
    Ok(out)
}

/// Set `user.e2b.<key>` on `path`.
pub fn write_metadata(path: &Path, key: &str, value: &str) -> Result<(), Error> {
    let c = cpath(path)?;
    let name = CString::new(format!("{METADATA_PREFIX}{key}"))
        .map_err(|_| Error::InvalidArgument("metadata key contains a NUL byte".into()))?;
    // SAFETY: pointers are valid for the given lengths.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(Error::io(
            format!("set metadata {key:?} on {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Describe `path`. A symlink reports its target's type and size, with `isSymlink` set
/// and `symlinkTarget` the resolved target; a dangling one has type SYMLINK.
pub fn entry_info(path: &Path, users: &Users) -> Result<EntryInfo, Error> {
    let lmeta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    let is_symlink = lmeta.file_type().is_symlink();
    let (meta, symlink_target) = if is_symlink {
        match (std::fs::metadata(path), std::fs::canonicalize(path)) {
            (Ok(m), Ok(target)) => (m, Some(target.to_string_lossy().into_owned())),
            _ => {
                let raw = std::fs::read_link(path)
                    .map(|t| t.to_string_lossy().into_owned())
                    .ok();
                (lmeta.clone(), raw)
            }
        }
    } else {
        (lmeta.clone(), None)
    };
    let ftype = file_type(&meta);
    let mode = go_mode(meta.mode());
    Ok(EntryInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        file_type: ftype,
        path: path.to_string_lossy().into_owned(),
        // Directories report 0, as envd does (their st_size is filesystem noise).
        size: if ftype == FileType::Directory {
            0
        } else {
            i64::try_from(meta.len()).unwrap_or(i64::MAX)
        },
        // Permission bits only (Go's `Mode().Perm()`); the type is in `type`.
        mode: mode & 0o777,
        permissions: permissions_string(mode),
        owner: users.user_name(meta.uid()),
        group: users.group_name(meta.gid()),
        modified_time: rfc3339(&meta),
        symlink_target,
        metadata: read_metadata(path)?,
        is_symlink,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_strings_like_go() {
        assert_eq!(
            permissions_string(go_mode(libc::S_IFREG | 0o644)),
            "-rw-r--r--"
        );
        assert_eq!(
            permissions_string(go_mode(libc::S_IFDIR | 0o755)),
            "drwxr-xr-x"
        );
        assert_eq!(
            permissions_string(go_mode(libc::S_IFLNK | 0o777)),
            "Lrwxrwxrwx"
        );
        assert_eq!(
            permissions_string(go_mode(libc::S_IFREG | libc::S_ISUID | 0o755)),
            "urwxr-xr-x"
        );
        assert_eq!(
            permissions_string(go_mode(libc::S_IFDIR | libc::S_ISVTX | 0o777)),
            "dtrwxrwxrwx"
        );
        assert_eq!(
            permissions_string(go_mode(libc::S_IFCHR | 0o666)),
            "Dcrw-rw-rw-"
        );
        assert_eq!(go_mode(libc::S_IFDIR | 0o755), (1 << 31) | 0o755);
    }

    #[test]
    fn entry_for_file_dir_symlink_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.txt");
        std::fs::write(&file, "hello").unwrap();
        let users = Users::default();
        let e = entry_info(&file, &users).unwrap();
        assert_eq!(
            (e.name.as_str(), e.file_type, e.size),
            ("f.txt", FileType::File, 5)
        );
        assert!(e.modified_time.unwrap().ends_with('Z'));

        let d = entry_info(dir.path(), &users).unwrap();
        assert_eq!((d.file_type, d.size), (FileType::Directory, 0));

        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let l = entry_info(&link, &users).unwrap();
        assert!(l.is_symlink);
        assert_eq!(l.file_type, FileType::File);
        assert_eq!(
            l.symlink_target.as_deref(),
            file.canonicalize().unwrap().to_str()
        );

        let dangling = dir.path().join("d");
        std::os::unix::fs::symlink("/nonexistent/x", &dangling).unwrap();
        let dl = entry_info(&dangling, &users).unwrap();
        assert_eq!(dl.file_type, FileType::Symlink);

        let missing = entry_info(&dir.path().join("nope"), &users);
        assert!(matches!(missing, Err(Error::NotFound(_))));
    }
}
