//! Who may use sudo, and what exactly a request runs: target user and groups, program,
//! arguments, environment and working directory. Pure, given the account files and a way
//! to test whether a path is an executable file.
//!
//! The rule is Debian's default sudoers policy with `NOPASSWD`: root and the members of
//! group `sudo` (per the sandbox's /etc/group, read for each request) may run anything as
//! anyone; nobody else may use sudo at all.

use std::path::{Path, PathBuf};

use super::protocol::{PreserveEnv, Request};
use crate::users::{User, Users};

/// The group whose members may use sudo.
pub const SUDO_GROUP: &str = "sudo";

/// Debian's `secure_path`: PATH for every command, and where commands are looked up.
pub const SECURE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Variables kept from the caller's environment by default (sudo's `env_reset`), besides
/// `LC_*`. Nothing here changes how a program loads or what it executes.
const KEEP: &[&str] = &[
    "TERM",
    "COLORTERM",
    "COLORS",
    "LS_COLORS",
    "DISPLAY",
    "XAUTHORITY",
    "HOSTNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
];

/// Why a request is not run; the text is for the caller's stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The caller may not do this.
    Denied(String),
    /// Allowed, but it cannot be done (unknown user, command not found).
    Failed(String),
}

/// A request the caller may run, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub program: PathBuf,
    pub arg0: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The calling user (uid from `SCM_CREDENTIALS`), if they may use sudo.
pub fn authorize(users: &Users, uid: u32) -> Result<User, Refusal> {
    let caller = users.by_uid(uid).ok_or_else(|| {
        Refusal::Denied(format!(
            "you (uid {uid}) do not exist in the passwd database"
        ))
    })?;
    if uid == 0 || users.in_group(&caller, SUDO_GROUP) {
        Ok(caller)
    } else {
        Err(Refusal::Denied(format!(
            "{} is not in the sudoers file (only root and members of group {SUDO_GROUP} may use sudo)",
            caller.name
        )))
    }
}

/// Resolve an authorized caller's request. `caller_gid` is the caller's real gid (from
/// `SCM_CREDENTIALS`); `executable` tells whether a path is an executable file.
pub fn plan(
    users: &Users,
    caller: &User,
    caller_gid: u32,
    request: &Request,
    executable: impl Fn(&Path) -> bool,
) -> Result<Plan, Refusal> {
    let target = target_user(users, caller, request)?;
    let mut groups = users.group_ids(&target);
    let gid = match &request.group {
        None => target.gid,
        Some(spec) => {
            let gid = match spec.strip_prefix('#') {
                Some(n) => n.parse().ok(),
                None => users.group_id(spec),
            }
            .ok_or_else(|| Refusal::Failed(format!("unknown group {spec}")))?;
            groups.retain(|g| *g != gid);
            groups.insert(0, gid);
            gid
        }
    };

    let caller_cwd = if request.cwd.is_empty() {
        PathBuf::from("/")
    } else {
        PathBuf::from(&request.cwd)
    };
    let cwd = match (&request.chdir, request.login) {
        (Some(dir), _) => caller_cwd.join(dir),
        (None, true) => target.home.clone(),
        (None, false) => caller_cwd.clone(),
    };

    let (program, arg0, args) = if request.login || request.shell {
        let shell = if request.login {
            target.shell.clone()
        } else {
            lookup_env(&request.env, "SHELL")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| target.shell.clone())
        };
        let arg0 = if request.login {
            let name = shell.file_name().map(|n| n.to_string_lossy().into_owned());
            format!("-{}", name.unwrap_or_else(|| "sh".into()))
        } else {
            shell.to_string_lossy().into_owned()
        };
        let args = if request.command.is_empty() {
            Vec::new()
        } else {
            vec!["-c".to_owned(), shell_command(&request.command)]
        };
        (shell, arg0, args)
    } else {
        let (name, args) = request
            .command
            .split_first()
            .ok_or_else(|| Refusal::Failed("a command is required".into()))?;
        let program = find_program(name, &caller_cwd, &executable)
            .ok_or_else(|| Refusal::Failed(format!("{name}: command not found")))?;
        (program, name.clone(), args.to_vec())
    };

    let sudo_command = std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let env = environment(request, caller, caller_gid, &target, &sudo_command);
    Ok(Plan {
        program,
        arg0,
        args,
        env,
        cwd,
        uid: target.uid,
        gid,
        groups,
    })
}

/// `-u NAME`, `-u #UID`; with only `-g`, the caller; otherwise root.
fn target_user(users: &Users, caller: &User, request: &Request) -> Result<User, Refusal> {
    let unknown = |spec: &str| Refusal::Failed(format!("unknown user {spec}"));
    match (&request.user, &request.group) {
        (Some(spec), _) => match spec.strip_prefix('#') {
            Some(n) => n
                .parse()
                .ok()
                .and_then(|uid| users.by_uid(uid))
                .ok_or_else(|| unknown(spec)),
            None => users.lookup(spec).map_err(|_| unknown(spec)),
        },
        (None, Some(_)) => Ok(caller.clone()),
        (None, None) => users.lookup("root").map_err(|_| unknown("root")),
    }
}

/// A name with a slash is a path (relative to the caller's directory); any other is
/// looked up in [`SECURE_PATH`], as sudo does.
fn find_program(name: &str, cwd: &Path, executable: &impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let path = cwd.join(name);
        return executable(&path).then_some(path);
    }
    SECURE_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| executable(path))
}

/// The command line of `-s`/`-i` for `shell -c`: arguments joined by spaces, every
/// character but letters, digits, `_`, `-` and `$` escaped with a backslash (so words
/// stay words, and `$VAR` still expands, as with sudo).
fn shell_command(command: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in command.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for c in arg.chars() {
            if !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$')) {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

fn lookup_env<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A name and value `execve` can carry.
fn valid_var(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0')
}

/// The command's environment: the caller's variables `preserve_env` keeps, then the
/// ones sudo always sets, then the command line's `VAR=value`.
fn environment(
    request: &Request,
    caller: &User,
    caller_gid: u32,
    target: &User,
    sudo_command: &str,
) -> Vec<(String, String)> {
    let keep = |name: &str| -> bool {
        if request.login {
            return KEEP.contains(&name) || name.starts_with("LC_");
        }
        match &request.preserve_env {
            PreserveEnv::All => true,
            PreserveEnv::Reset => KEEP.contains(&name) || name.starts_with("LC_"),
            PreserveEnv::Names(names) => {
                KEEP.contains(&name) || name.starts_with("LC_") || names.iter().any(|n| n == name)
            }
        }
    };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| {
        env.retain(|(k, _)| k != name);
        env.push((name.to_owned(), value));
    };
    for (name, value) in &request.env {
        if keep(name) && valid_var(name, value) {
            set(name, value.clone());
        }
    }
    let keeps_home = matches!(request.preserve_env, PreserveEnv::All)
        && !request.set_home
        && !request.login
        && lookup_env(&request.env, "HOME").is_some();
    if !keeps_home {
        set("HOME", target.home.to_string_lossy().into_owned());
    }
    set("PATH", SECURE_PATH.to_owned());
    set("SHELL", target.shell.to_string_lossy().into_owned());
    set("USER", target.name.clone());
    set("LOGNAME", target.name.clone());
    set("MAIL", format!("/var/mail/{}", target.name));
    set("SUDO_USER", caller.name.clone());
    set("SUDO_UID", caller.uid.to_string());
    set("SUDO_GID", caller_gid.to_string());
    set("SUDO_COMMAND", sudo_command.to_owned());
    for (name, value) in &request.assignments {
        if valid_var(name, value) {
            set(name, value.clone());
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::UserDb;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        user:x:1000:1000::/home/user:/bin/bash\n\
        guest:x:1001:1001::/home/guest:/bin/sh\n\
        svc:x:1002:27::/srv:/usr/sbin/nologin\n";
    const GROUP: &str =
        "root:x:0:\nsudo:x:27:user\nuser:x:1000:\nguest:x:1001:\nstaff:x:50:guest\n";

    fn users() -> std::sync::Arc<Users> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("passwd"), PASSWD).expect("write");
        std::fs::write(dir.path().join("group"), GROUP).expect("write");
        UserDb::new(dir.path().join("passwd"), dir.path().join("group")).load()
    }

    fn everything_exists(_: &Path) -> bool {
        true
    }

    fn request(command: &[&str]) -> Request {
        Request {
            command: command.iter().map(|c| c.to_string()).collect(),
            cwd: "/home/user/project".into(),
            env: vec![
                ("TERM".into(), "xterm".into()),
                ("HOME".into(), "/home/user".into()),
                ("PATH".into(), "/home/user/bin:/usr/bin".into()),
                ("SECRET".into(), "s3cr3t".into()),
                ("LC_ALL".into(), "C.UTF-8".into()),
                ("SHELL".into(), "/bin/bash".into()),
            ],
            ..Request::default()
        }
    }

    fn get<'a>(plan: &'a Plan, name: &str) -> Option<&'a str> {
        lookup_env(&plan.env, name)
    }

    #[test]
    fn root_and_sudo_members_are_allowed_others_denied() {
        let u = users();
        assert_eq!(authorize(&u, 0).unwrap().name, "root");
        assert_eq!(authorize(&u, 1000).unwrap().name, "user");
        // Primary group sudo counts too.
        assert_eq!(authorize(&u, 1002).unwrap().name, "svc");
        assert!(
            matches!(authorize(&u, 1001), Err(Refusal::Denied(m)) if m.starts_with("guest is not in the sudoers file"))
        );
        assert!(matches!(authorize(&u, 4242), Err(Refusal::Denied(_))));
    }

    #[test]
    fn default_runs_as_root_with_a_reset_environment() {
        let u = users();
        let caller = authorize(&u, 1000).unwrap();
        let p = plan(&u, &caller, 1000, &request(&["whoami"]), |p| {
            p == Path::new("/usr/bin/whoami")
        })
        .unwrap();
        assert_eq!(p.program, PathBuf::from("/usr/bin/whoami"));
        assert_eq!(p.arg0, "whoami");
        assert_eq!((p.uid, p.gid, p.groups.clone()), (0, 0, vec![0]));
        assert_eq!(p.cwd, PathBuf::from("/home/user/project"));
        assert_eq!(get(&p, "SECRET"), None);
        assert_eq!(get(&p, "TERM"), Some("xterm"));
        assert_eq!(get(&p, "LC_ALL"), Some("C.UTF-8"));
        assert_eq!(get(&p, "HOME"), Some("/root"));
        assert_eq!(get(&p, "PATH"), Some(SECURE_PATH));
        assert_eq!(get(&p, "USER"), Some("root"));
        assert_eq!(get(&p, "LOGNAME"), Some("root"));
        assert_eq!(get(&p, "SUDO_USER"), Some("user"));
        assert_eq!(get(&p, "SUDO_UID"), Some("1000"));
        assert_eq!(get(&p, "SUDO_GID"), Some("1000"));
        assert_eq!(get(&p, "SUDO_COMMAND"), Some("/usr/bin/whoami"));
        // Each name once.
        let mut names: Vec<_> = p.env.iter().map(|(k, _)| k).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), p.env.len());
    }

    #[test]
    fn preserved_environments() {
        let u = users();
        let caller = authorize(&u, 1000).unwrap();
        let mut r = request(&["env"]);
        r.preserve_env = PreserveEnv::All;
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(get(&p, "SECRET"), Some("s3cr3t"));
        assert_eq!(get(&p, "HOME"), Some("/home/user"), "-E keeps HOME");
        assert_eq!(get(&p, "PATH"), Some(SECURE_PATH), "secure_path wins");
        r.set_home = true;
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(get(&p, "HOME"), Some("/root"), "-H");

        let mut r = request(&["env"]);
        r.preserve_env = PreserveEnv::Names(vec!["SECRET".into()]);
        r.assignments = vec![("FOO".into(), "bar".into()), ("BAD=".into(), "x".into())];
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(get(&p, "SECRET"), Some("s3cr3t"));
        assert_eq!(get(&p, "FOO"), Some("bar"));
        assert!(p.env.iter().all(|(k, _)| !k.contains('=')));
    }

    #[test]
    fn other_users_and_groups() {
        let u = users();
        let root = authorize(&u, 0).unwrap();
        let mut r = request(&["id"]);
        r.user = Some("user".into());
        let p = plan(&u, &root, 0, &r, everything_exists).unwrap();
        assert_eq!(
            (p.uid, p.gid, p.groups.clone()),
            (1000, 1000, vec![1000, 27])
        );
        assert_eq!(get(&p, "HOME"), Some("/home/user"));
        assert_eq!(get(&p, "SUDO_USER"), Some("root"));

        r.user = Some("#1001".into());
        r.group = Some("staff".into());
        let p = plan(&u, &root, 0, &r, everything_exists).unwrap();
        assert_eq!((p.uid, p.gid, p.groups), (1001, 50, vec![50, 1001]));

        // Only -g: the caller, with that group.
        let caller = authorize(&u, 1000).unwrap();
        r.user = None;
        r.group = Some("#0".into());
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!((p.uid, p.gid), (1000, 0));

        r.user = Some("nobody-here".into());
        assert_eq!(
            plan(&u, &caller, 1000, &r, everything_exists),
            Err(Refusal::Failed("unknown user nobody-here".into()))
        );
        r.user = None;
        r.group = Some("nogroup-here".into());
        assert!(matches!(
            plan(&u, &caller, 1000, &r, everything_exists),
            Err(Refusal::Failed(_))
        ));
    }

    #[test]
    fn programs_are_found_in_secure_path_or_by_path() {
        let u = users();
        let caller = authorize(&u, 1000).unwrap();
        let only_sbin = |p: &Path| p == Path::new("/usr/sbin/useradd");
        let p = plan(&u, &caller, 1000, &request(&["useradd", "x"]), only_sbin).unwrap();
        assert_eq!(p.program, PathBuf::from("/usr/sbin/useradd"));
        assert_eq!(p.args, vec!["x".to_string()]);
        assert_eq!(get(&p, "SUDO_COMMAND"), Some("/usr/sbin/useradd x"));
        assert_eq!(
            plan(&u, &caller, 1000, &request(&["nope"]), only_sbin),
            Err(Refusal::Failed("nope: command not found".into()))
        );
        // Relative to the caller's directory; the caller's PATH is never searched.
        let p = plan(
            &u,
            &caller,
            1000,
            &request(&["./run.sh"]),
            everything_exists,
        )
        .unwrap();
        assert_eq!(p.program, PathBuf::from("/home/user/project/./run.sh"));
        assert_eq!(p.arg0, "./run.sh");
    }

    #[test]
    fn shells_and_login_shells() {
        let u = users();
        let caller = authorize(&u, 1000).unwrap();
        let mut r = request(&["echo", "$HOME", "a b;c"]);
        r.shell = true;
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(p.program, PathBuf::from("/bin/bash"), "the caller's $SHELL");
        assert_eq!(
            p.args,
            vec!["-c".to_string(), "echo $HOME a\\ b\\;c".to_string()]
        );
        assert_eq!(p.cwd, PathBuf::from("/home/user/project"));

        let mut r = request(&[]);
        r.login = true;
        r.user = Some("guest".into());
        r.preserve_env = PreserveEnv::All;
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(p.program, PathBuf::from("/bin/sh"), "the target's shell");
        assert_eq!(p.arg0, "-sh");
        assert!(p.args.is_empty());
        assert_eq!(p.cwd, PathBuf::from("/home/guest"));
        assert_eq!(get(&p, "HOME"), Some("/home/guest"));
        assert_eq!(get(&p, "SECRET"), None, "-i resets the environment");
        assert_eq!(get(&p, "TERM"), Some("xterm"));
    }

    #[test]
    fn chdir_is_relative_to_the_caller() {
        let u = users();
        let caller = authorize(&u, 1000).unwrap();
        let mut r = request(&["pwd"]);
        r.chdir = Some("sub".into());
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(p.cwd, PathBuf::from("/home/user/project/sub"));
        r.chdir = Some("/tmp".into());
        let p = plan(&u, &caller, 1000, &r, everything_exists).unwrap();
        assert_eq!(p.cwd, PathBuf::from("/tmp"));
    }
}
