//! Users and groups, read from `/etc/passwd` and `/etc/group` directly.
//!
//! The agent is linked statically against glibc, which cannot load NSS modules, so
//! `getpwnam` is not an option. A process in the sandbox may add users at any time, so every
//! request looks at both files again: by their metadata, and reads them again when either
//! changed (five system calls a file fewer, and under gVisor each can cost 60 us);
//! [`Users`] is one reading.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::Error;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
    /// The login shell (`/bin/sh` when the entry has none).
    pub shell: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Where the account files live (configurable so the agent can run on a host, in tests).
#[derive(Debug, Clone)]
pub struct UserDb {
    passwd: PathBuf,
    group: PathBuf,
    /// Shared by clones.
    last: Arc<Mutex<Option<Reading>>>,
}

/// The last reading, with the files' stamps when it was made.
#[derive(Debug)]
struct Reading {
    stamps: Stamps,
    users: Arc<Users>,
}

/// What tells a file from the file it was: an edit in place changes its size or times, a
/// replacement (as `useradd` writes it) its inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// `/etc/passwd`'s and `/etc/group`'s; `None` for a file that cannot be read.
type Stamps = [Option<Stamp>; 2];

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// One reading of the account files.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
    groups: Vec<Group>,
}

impl UserDb {
    pub fn new(passwd: PathBuf, group: PathBuf) -> Self {
        UserDb {
            passwd,
            group,
            last: Arc::default(),
        }
    }

    /// Both files as they are now: the last reading while neither changed, else a new
    /// one. A missing or unreadable file counts as empty: lookups then fall back to
    /// numeric ids, and only `root` is known.
    pub fn load(&self) -> Arc<Users> {
        let stamps = [stamp(&self.passwd), stamp(&self.group)];
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reading) = last.as_ref().filter(|r| r.stamps == stamps) {
            return reading.users.clone();
        }
        // A change between the stamps and the reads only makes the next call read again.
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let users = Arc::new(Users {
            users: parse_passwd(&read(&self.passwd)),
            groups: parse_group(&read(&self.group)),
        });
        *last = Some(Reading {
            stamps,
            users: users.clone(),
        });
        users
    }
}

impl Users {
    /// The user called `name`. Unknown users are an authentication error, as in envd.
    pub fn lookup(&self, name: &str) -> Result<User, Error> {
        if let Some(u) = self.users.iter().find(|u| u.name == name) {
            return Ok(u.clone());
        }
        if name == "root" {
            // A rootfs without /etc/passwd still has a root.
            return Ok(User {
                name: "root".into(),
                uid: 0,
                gid: 0,
                home: PathBuf::from("/root"),
                shell: PathBuf::from("/bin/sh"),
            });
        }
        Err(Error::Unauthenticated(format!("user {name:?} not found")))
    }

    /// The name for `uid`, or the number when no entry has it.
    pub fn user_name(&self, uid: u32) -> String {
        self.users
            .iter()
            .find(|u| u.uid == uid)
            .map(|u| u.name.clone())
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name for `gid`, or the number when no entry has it.
    pub fn group_name(&self, gid: u32) -> String {
        self.groups
            .iter()
            .find(|g| g.gid == gid)
            .map(|g| g.name.clone())
            .unwrap_or_else(|| gid.to_string())
    }

    /// The user whose uid is `uid`, if an entry has it (root always has one).
    pub fn by_uid(&self, uid: u32) -> Option<User> {
        match self.users.iter().find(|u| u.uid == uid) {
            Some(u) => Some(u.clone()),
            None if uid == 0 => self.lookup("root").ok(),
            None => None,
        }
    }

    /// The gid of the group called `name`.
    pub fn group_id(&self, name: &str) -> Option<u32> {
        self.groups.iter().find(|g| g.name == name).map(|g| g.gid)
    }

    /// Whether `user` belongs to group `name`, as its primary group or as a listed member.
    pub fn in_group(&self, user: &User, name: &str) -> bool {
        self.groups
            .iter()
            .filter(|g| g.name == name)
            .any(|g| g.gid == user.gid || g.members.iter().any(|m| m == &user.name))
    }

    /// The user's primary group plus every group that lists them as a member.
    pub fn group_ids(&self, user: &User) -> Vec<u32> {
        let mut gids = vec![user.gid];
        for g in &self.groups {
            if g.members.iter().any(|m| m == &user.name) && !gids.contains(&g.gid) {
                gids.push(g.gid);
            }
        }
        gids
    }
}

/// `name:password:uid:gid:gecos:home:shell`; malformed lines are skipped.
fn parse_passwd(text: &str) -> Vec<User> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(User {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(if f[5].is_empty() { "/" } else { f[5] }),
                shell: PathBuf::from(if f[6].is_empty() { "/bin/sh" } else { f[6] }),
            })
        })
        .collect()
}

/// `name:password:gid:member,member`; malformed lines are skipped.
fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        # comment\n\
        broken line\n\
        user:x:1000:1000::/home/user:/bin/bash\n\
        nohome:x:1001:1001:::/bin/sh\n\
        baduid:x:abc:1:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\nuser:x:1000:\nsudo:x:27:user,other\nbad\n";

    fn users() -> Users {
        Users {
            users: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        }
    }

    #[test]
    fn parses_passwd_and_skips_garbage() {
        let u = users();
        assert_eq!(u.users.len(), 3);
        let user = u.lookup("user").unwrap();
        assert_eq!((user.uid, user.gid), (1000, 1000));
        assert_eq!(user.home, PathBuf::from("/home/user"));
        assert_eq!(u.lookup("nohome").unwrap().home, PathBuf::from("/"));
        assert!(matches!(u.lookup("baduid"), Err(Error::Unauthenticated(_))));
    }

    #[test]
    fn root_exists_without_passwd() {
        let empty = Users::default();
        assert_eq!(empty.lookup("root").unwrap().uid, 0);
        assert!(empty.lookup("user").is_err());
    }

    #[test]
    fn names_and_groups() {
        let u = users();
        assert_eq!(u.user_name(1000), "user");
        assert_eq!(u.user_name(4242), "4242");
        assert_eq!(u.group_name(27), "sudo");
        assert_eq!(u.group_name(9), "9");
        let user = u.lookup("user").unwrap();
        assert_eq!(u.group_ids(&user), vec![1000, 27]);
        assert_eq!(user.shell, PathBuf::from("/bin/bash"));
        assert_eq!(u.by_uid(1000).unwrap().name, "user");
        assert!(u.by_uid(4242).is_none());
        assert_eq!(Users::default().by_uid(0).unwrap().name, "root");
        assert_eq!(u.group_id("sudo"), Some(27));
        assert!(u.in_group(&user, "sudo"));
        assert!(u.in_group(&user, "user"), "primary group by gid");
        assert!(!u.in_group(&u.lookup("nohome").unwrap(), "sudo"));
    }

    #[test]
    fn a_reading_is_kept_until_a_file_changes() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let (passwd, group) = (dir.path().join("passwd"), dir.path().join("group"));
        std::fs::write(&passwd, PASSWD).unwrap();
        std::fs::write(&group, GROUP).unwrap();
        let db = UserDb::new(passwd.clone(), group.clone());
        let first = db.load();
        assert!(
            Arc::ptr_eq(&first, &db.clone().load()),
            "read once, for clones too"
        );

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&passwd)
            .unwrap();
        file.write_all(b"new:x:1002:1002::/home/new:/bin/sh\n")
            .unwrap();
        assert_eq!(
            db.load().lookup("new").unwrap().uid,
            1002,
            "edited in place"
        );

        let replacement = dir.path().join("group.new");
        std::fs::write(&replacement, format!("{GROUP}extra:x:2000:new\n")).unwrap();
        std::fs::rename(&replacement, &group).unwrap();
        assert_eq!(db.load().group_id("extra"), Some(2000), "replaced");

        std::fs::remove_file(&passwd).unwrap();
        assert!(db.load().lookup("user").is_err(), "removed");
    }
}
