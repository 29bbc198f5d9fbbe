//! `EntryInfo` for a path: type, size, Go-style mode and permission string, owner and
//! group names, modification time, symlink target and `user.e2b.*` metadata.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
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

/// How much of a file's metadata may be asked for at once: names (with the prefix) and
/// values together, as envd allows (what ext4 keeps in one block).
const MAX_METADATA_BYTES: usize = 4096;
/// The kernel's limit on an xattr's name.
const MAX_XATTR_NAME: usize = 255;
/// The first buffer an xattr list or value is read into: large enough for nearly all.
const XATTR_READ_SIZE: usize = 4096;

/// Check metadata to be written as envd does, before anything is: keys non-empty and
/// short enough for an xattr name, keys and values printable ASCII, all of it at most
/// [`MAX_METADATA_BYTES`]. Otherwise the kernel would refuse it only once the file is
/// written.
pub fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), Error> {
    let invalid = |what: String| Err(Error::InvalidArgument(format!("invalid metadata: {what}")));
    let printable = |s: &str| s.bytes().all(|b| (0x20..=0x7e).contains(&b));
    let mut total = 0;
    for (key, value) in metadata {
        if key.is_empty() {
            return invalid("a key is empty".into());
        }
        if METADATA_PREFIX.len() + key.len() > MAX_XATTR_NAME {
            let most = MAX_XATTR_NAME - METADATA_PREFIX.len();
            return invalid(format!("key {key:?} is over {most} bytes"));
        }
        if !printable(key) || !printable(value) {
            return invalid(format!("key {key:?} or its value is not printable ASCII"));
        }
        total += METADATA_PREFIX.len() + key.len() + value.len();
    }
    if total > MAX_METADATA_BYTES {
        return invalid(format!(
            "{total} bytes of names and values, over {MAX_METADATA_BYTES}"
        ));
    }
    Ok(())
}

/// Read an xattr list or value with `call`, a system call reading into the buffer it is
/// given (an empty one asks for the size): into a buffer that fits nearly every one, or,
/// when that is too small (ERANGE), into one of the size the kernel says, again if it
/// grew in between.
fn read_xattr(
    mut call: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XATTR_READ_SIZE];
    loop {
        match call(&mut buf) {
            // More than an empty buffer holds: it grew since the size was asked.
            Ok(n) if n <= buf.len() => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {}
            Err(e) => return Err(e),
        }
        buf = vec![0u8; call(&mut [])?];
    }
}

/// A system call's byte count, or its error.
fn syscall_len(n: isize) -> std::io::Result<usize> {
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// The names of the `user.e2b.*` xattrs of `path` (not following symlinks), prefix
/// included.
fn metadata_names(path: &CStr) -> std::io::Result<Vec<CString>> {
    let list = read_xattr(|buf| {
        // SAFETY: the buffer is valid for its length.
        syscall_len(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
    })?;
    Ok(list
        .split(|b| *b == 0)
        .filter(|name| name.starts_with(METADATA_PREFIX.as_bytes()))
        // Split on NUL, so never refused.
        .filter_map(|name| CString::new(name).ok())
        .collect())
}

/// The key a metadata xattr name stands for.
fn metadata_key(name: &CStr) -> &[u8] {
    &name.to_bytes()[METADATA_PREFIX.len()..]
}

/// The `user.e2b.*` xattrs of `path` (not following symlinks), prefix stripped. A
/// filesystem without xattr support simply has no metadata.
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let c = cpath(path)?;
    let mut out = BTreeMap::new();
    let Ok(names) = metadata_names(&c) else {
        return Ok(out);
    };
    for name in names {
        let value = read_xattr(|buf| {
            // SAFETY: the buffer is valid for its length.
            syscall_len(unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            })
        });
        // Removed since it was listed: not there. A key or value that is not UTF-8 (set
        // in the sandbox, with setfattr say) is skipped, as envd skips it: the protocol's
        // strings cannot carry it, and a lossy copy would name another key or value.
        let Ok(value) = value else { continue };
        if let (Ok(key), Ok(value)) = (
            std::str::from_utf8(metadata_key(&name)),
            String::from_utf8(value),
        ) {
            out.insert(key.to_owned(), value);
        }
    }
    Ok(out)
}

/// Whether metadata asked for was stored on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataWritten {
    Stored,
    /// The file's filesystem keeps none (/proc, /sys, some FUSE mounts), or the file is
    /// the system's (a device, a kernel knob).
    NotStored,
}

/// Make the `user.e2b.*` xattrs of `path` exactly `metadata`, as envd does: other keys
/// are removed (a file written in place keeps its xattrs, and an upload replaces the
/// whole set), the given ones set. On a filesystem that keeps no xattrs nothing is
/// stored: logged, not an error, as envd keeps the file then. A name or value the
/// filesystem finds too large is the caller's argument.
pub fn write_metadata(
    path: &Path,
    metadata: &BTreeMap<String, String>,
) -> Result<MetadataWritten, Error> {
    let c = cpath(path)?;
    let failed = |context: String, e: std::io::Error| match e.raw_os_error() {
        // ENOTSUP is the same number on Linux.
        Some(libc::EOPNOTSUPP) => {
            if !metadata.is_empty() {
                tracing::warn!(error = %e, "{context}: the filesystem keeps no metadata");
            }
            Ok(MetadataWritten::NotStored)
        }
        Some(libc::E2BIG | libc::ERANGE) => Err(Error::InvalidArgument(format!("{context}: {e}"))),
        _ => Err(Error::io(context, e)),
    };
    let names = match metadata_names(&c) {
        Ok(names) => names,
        Err(e) => return failed(format!("list metadata of {}", path.display()), e),
    };
    for name in names {
        let key = metadata_key(&name);
        if std::str::from_utf8(key).is_ok_and(|key| metadata.contains_key(key)) {
            continue;
        }
        // SAFETY: both are valid NUL-terminated strings.
        if unsafe { libc::lremovexattr(c.as_ptr(), name.as_ptr()) } != 0 {
            let e = std::io::Error::last_os_error();
            // Removed meanwhile: gone as asked.
            if e.raw_os_error() != Some(libc::ENODATA) {
                let key = String::from_utf8_lossy(key);
                return failed(
                    format!("remove metadata {key:?} from {}", path.display()),
                    e,
                );
            }
        }
    }
    for (key, value) in metadata {
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
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return failed(format!("set metadata {key:?} on {}", path.display()), e);
        }
    }
    Ok(MetadataWritten::Stored)
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

    #[test]
    fn metadata_round_trip_and_what_cannot_be_stored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let metadata = BTreeMap::from([
            ("owner".to_string(), "alice".to_string()),
            ("long".to_string(), "v".repeat(3000)),
        ]);
        validate_metadata(&metadata).unwrap();
        assert_eq!(
            write_metadata(&file, &metadata).unwrap(),
            MetadataWritten::Stored
        );
        assert_eq!(read_metadata(&file).unwrap(), metadata);

        // Writing again replaces the set: keys not given are removed.
        let next = BTreeMap::from([
            ("owner".to_string(), "bob".to_string()),
            ("new".to_string(), "x".to_string()),
        ]);
        write_metadata(&file, &next).unwrap();
        assert_eq!(read_metadata(&file).unwrap(), next);

        // What is not UTF-8 (set in the sandbox) is not read, and is replaced too.
        let c = cpath(&file).unwrap();
        for (name, value) in [
            (&b"user.e2b.k\xff"[..], &b"v"[..]),
            (b"user.e2b.v", b"\xfe"),
        ] {
            let name = CString::new(name).unwrap();
            // SAFETY: valid pointers for the given lengths.
            let rc = unsafe {
                libc::lsetxattr(
                    c.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        }
        assert_eq!(metadata_names(&c).unwrap().len(), 4);
        assert_eq!(read_metadata(&file).unwrap(), next);
        write_metadata(&file, &BTreeMap::new()).unwrap();
        assert!(metadata_names(&c).unwrap().is_empty());

        // procfs keeps no xattrs: nothing stored, and no error.
        let comm = Path::new("/proc/self/comm");
        assert_eq!(
            write_metadata(comm, &metadata).unwrap(),
            MetadataWritten::NotStored
        );
        assert!(read_metadata(comm).unwrap().is_empty());

        // Larger than any filesystem takes: the caller's argument.
        let huge = BTreeMap::from([("k".to_string(), "v".repeat(70_000))]);
        assert!(matches!(
            write_metadata(&file, &huge),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn metadata_is_checked_as_envd_checks_it() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        validate_metadata(&one("k", &"v".repeat(4000))).unwrap();
        validate_metadata(&one(&"k".repeat(246), "v")).unwrap();
        for bad in [
            one("", "v"),
            one(&"k".repeat(247), "v"),
            one("k", &"v".repeat(4096)),
            one("k", "tab\there"),
            one("k", "é"),
        ] {
            assert!(
                matches!(validate_metadata(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn xattr_reads_retry_with_the_size_the_kernel_says() {
        // A value larger than the first buffer, which grows once more between the size
        // asked and the second read.
        let mut value = vec![7u8; 10_000];
        let mut asked = 0;
        let read = read_xattr(|buf| {
            if buf.is_empty() {
                asked += 1;
                let size = value.len();
                if asked == 1 {
                    value.push(8);
                }
                return Ok(size);
            }
            if buf.len() < value.len() {
                return Err(std::io::Error::from_raw_os_error(libc::ERANGE));
            }
            buf[..value.len()].copy_from_slice(&value);
            Ok(value.len())
        })
        .unwrap();
        assert_eq!(read.len(), 10_001);
        assert_eq!(asked, 2);
        let other = read_xattr(|_| Err(std::io::Error::from_raw_os_error(libc::ENODATA)));
        assert_eq!(other.unwrap_err().raw_os_error(), Some(libc::ENODATA));
    }
}
