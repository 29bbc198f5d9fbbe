//! Building the `base` template: debootstrap, configure in the tree, publish.
//!
//! 1. Cached: `<templates_dir>/base/<hash>/` exists → done (it only ever appears
//!    complete, see 4).
//! 2. Debootstrap the [`BASE`](crate::recipe::BASE) recipe into
//!    `<templates_dir>/base/.tmp-<hash>-<pid>/rootfs`, from the host's mirror.
//! 3. Configure: user `user` (uid 1000, bash, passwordless sudo), `/opt/silo` for the
//!    agent mount, hostname, hosts, resolv.conf; drop apt's caches. Debian's setuid sudo
//!    cannot work under gVisor, so it is diverted and `/usr/bin/sudo` links to the agent,
//!    whose broker serves members of group `sudo` (docs/adr/0005-sudo-in-gvisor.md).
//! 4. Publish: rename the temp dir to `<hash>`. A crashed build leaves only a `.tmp-`
//!    dir, which [`prune_base`] removes once its builder is gone.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::cache::{self, Slot};
use crate::mirror::{self, MirrorError};
use crate::recipe::{Recipe, BASE};

/// debootstrap of the base set takes ~90 s with a near mirror; allow for a slow one.
const DEBOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const CHROOT_TIMEOUT: Duration = Duration::from_secs(60);
const HOSTNAME: &str = "sandbox";
const USER: &str = "user";
const UID: &str = "1000";

/// A build stage, reported when it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// A complete build exists; nothing to do.
    Cached,
    Debootstrap,
    Configure,
    /// A derived template: copying its parent's rootfs.
    CopyParent,
    /// A derived template: running step `index` of `total` (from 1).
    Step {
        index: usize,
        total: usize,
    },
    /// A Dockerfile template: instruction `index` of `total` (from 1), `cached` when
    /// its layer was built before.
    Instruction {
        index: usize,
        total: usize,
        text: String,
        cached: bool,
    },
    /// A Dockerfile template: unpacking the OCI image it starts FROM.
    Image {
        reference: String,
    },
    Publish,
}

/// Progress of a build, for a CLI's progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Stage(Stage),
    /// One line of debootstrap's output (`I: Retrieving ...`, `I: Unpacking ...`).
    Line(String),
}

/// A complete template build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatePath {
    /// The root filesystem directory.
    pub rootfs: PathBuf,
    /// The recipe hash naming the build.
    pub hash: String,
}

/// Errors building or pruning templates.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("find the debian mirror")]
    Mirror(#[from] MirrorError),
    #[error("prepare build directory {path}")]
    PrepareDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spawn {program}; is it installed (apt-get install {program})?")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("debootstrap timed out after {DEBOOTSTRAP_TIMEOUT:?}")]
    DebootstrapTimeout,
    #[error("debootstrap failed ({status}); last output: {tail}")]
    Debootstrap {
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("run `{command}` in the new rootfs: {detail}")]
    Chroot { command: String, detail: String },
    #[error("configure {path}")]
    Configure {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("publish {from} as {to}")]
    Publish {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Dockerfile(#[from] crate::dockerfile::ParseError),
    #[error("{0}")]
    Context(String),
    #[error("step {index} (Dockerfile line {line}) `{instruction}` failed: {detail}")]
    Step {
        index: usize,
        line: usize,
        instruction: String,
        detail: String,
    },
    #[error("give a RUN step its network")]
    StepNetwork(#[source] crate::dockerbuild::NetworkError),
    #[error("prune {path}")]
    Prune {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Its caller cancelled it (`DockerfileBuild::cancel`); what it held is released.
    #[error("the build was cancelled")]
    Cancelled,
}

/// Build the `base` template under `templates_dir`, or reuse a complete build of the
/// same recipe.
pub async fn build_base(
    templates_dir: &Path,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<TemplatePath, BuildError> {
    let recipe = &BASE;
    let work = match cache::slot(&templates_dir.join("base"), &recipe.hash()).await? {
        Slot::Cached(done) => {
            progress(Progress::Stage(Stage::Cached));
            return Ok(done);
        }
        Slot::Build(work) => work,
    };
    let built = async {
        let mirror = mirror::debian_mirror(Path::new("/etc/apt"), recipe.suite)?;
        progress(Progress::Stage(Stage::Debootstrap));
        debootstrap(recipe, &mirror, &work.rootfs, &mut progress).await?;
        progress(Progress::Stage(Stage::Configure));
        configure(&work.rootfs).await
    }
    .await;
    if let Err(e) = built {
        work.discard().await;
        return Err(e);
    }
    progress(Progress::Stage(Stage::Publish));
    work.publish().await
}

/// Remove every `base` build except `keep`, and temp dirs of builders that are gone.
/// Returns what was removed. Sandboxes still running on a removed rootfs keep working
/// only as long as their open files; prune when none use it.
pub async fn prune_base(
    templates_dir: &Path,
    keep: &TemplatePath,
) -> Result<Vec<PathBuf>, BuildError> {
    let base_dir = templates_dir.join("base");
    let mut entries = match tokio::fs::read_dir(&base_dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BuildError::Prune {
                path: base_dir,
                source,
            })
        }
    };
    let mut removed = Vec::new();
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|source| BuildError::Prune {
            path: base_dir.clone(),
            source,
        })?
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == keep.hash || builder_alive(&name) {
            continue;
        }
        let path = entry.path();
        crate::cache::remove_build_dir(&path)
            .await
            .map_err(|source| BuildError::Prune {
                path: path.clone(),
                source,
            })?;
        removed.push(path);
    }
    Ok(removed)
}

/// Whether `name` is a temp dir (`.tmp-<hash>-<pid>`, `.flatten-<pid>`) of a process
/// still running.
pub(crate) fn builder_alive(name: &str) -> bool {
    name.starts_with('.') && builder_pid(name).is_some_and(process_exists)
}

/// Whether `name` is a temp dir (`.tmp-<hash>-<pid>`, `.flatten-<pid>`) of a process
/// that is gone: no one will finish or remove it. Names of any other shape are no
/// build's, so never dead builders'.
pub(crate) fn builder_dead(name: &str) -> bool {
    (name.starts_with(".tmp-") || name.starts_with(".flatten-"))
        && builder_pid(name).is_some_and(|pid| !process_exists(pid))
}

fn builder_pid(name: &str) -> Option<u32> {
    name.rsplit_once('-').and_then(|(_, pid)| pid.parse().ok())
}

/// Whether `pid` is a process that may still work: a zombie is not. A server killed
/// below its reaper is one until the host's init reaps it, which may be late, and its
/// successor starts at once.
fn process_exists(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ...": comm may hold anything, the state follows its last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X'))
}

async fn debootstrap(
    recipe: &Recipe,
    mirror: &str,
    rootfs: &Path,
    progress: &mut (impl FnMut(Progress) + Send),
) -> Result<(), BuildError> {
    let mut child = Command::new("debootstrap")
        .arg(format!("--variant={}", recipe.variant))
        .arg(format!("--include={}", recipe.packages.join(",")))
        .arg(recipe.suite)
        .arg(rootfs)
        .arg(mirror)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BuildError::Spawn {
            program: "debootstrap",
            source,
        })?;
    let mut out = child.stdout.take().map(|s| BufReader::new(s).lines());
    let mut err = child.stderr.take().map(|s| BufReader::new(s).lines());
    let mut tail: Vec<String> = Vec::new();
    let forward = async {
        loop {
            let line = tokio::select! {
                Some(l) = next_line(&mut out) => l,
                Some(l) = next_line(&mut err) => l,
                else => break,
            };
            if tail.len() == 20 {
                tail.remove(0);
            }
            tail.push(line.clone());
            progress(Progress::Line(line));
        }
        child.wait().await
    };
    let status = tokio::time::timeout(DEBOOTSTRAP_TIMEOUT, forward)
        .await
        .map_err(|_| BuildError::DebootstrapTimeout)?
        .map_err(|source| BuildError::Spawn {
            program: "debootstrap",
            source,
        })?;
    if !status.success() {
        return Err(BuildError::Debootstrap {
            status,
            tail: tail.join("\n"),
        });
    }
    Ok(())
}

/// The next line of a stream, or `None` once it ended (and stays ended).
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Option<tokio::io::Lines<R>>,
) -> Option<String> {
    let stream = lines.as_mut()?;
    match stream.next_line().await {
        Ok(Some(line)) => Some(line),
        _ => {
            *lines = None;
            None
        }
    }
}

async fn configure(rootfs: &Path) -> Result<(), BuildError> {
    chroot(
        rootfs,
        &[
            "useradd",
            "--create-home",
            "--home-dir",
            "/home/user",
            "--uid",
            UID,
            "--user-group",
            "--shell",
            "/bin/bash",
            USER,
        ],
    )
    .await?;
    write(
        rootfs,
        "etc/sudoers.d/user",
        &format!("{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
        0o440,
    )
    .await?;
    chroot(rootfs, &["usermod", "--append", "--groups", "sudo", USER]).await?;
    chroot(
        rootfs,
        &[
            "dpkg-divert",
            "--local",
            "--rename",
            "--add",
            "/usr/bin/sudo",
        ],
    )
    .await?;
    symlink(rootfs, "usr/bin/sudo", "/opt/silo/silo-agent").await?;
    fast_login_profile(rootfs).await?;
    configure_host_files(rootfs).await?;
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        remove_files_in(&rootfs.join(cache)).await?;
    }
    Ok(())
}

/// The SDKs run every command with `bash -l -c`, so /etc/profile runs each time; its
/// `$(id -u)` costs a fork and exec, which gVisor makes the largest part of a short
/// command's time (~25 ms of ~55 ms measured). bash knows its `EUID`; sh falls back to
/// `id`.
pub(crate) async fn fast_login_profile(rootfs: &Path) -> Result<(), BuildError> {
    let path = path_in(rootfs, "etc/profile")?;
    if !path.is_file() {
        return Ok(());
    }
    let profile =
        tokio::fs::read_to_string(&path)
            .await
            .map_err(|source| BuildError::Configure {
                path: path.clone(),
                source,
            })?;
    let patched = profile.replace("\"$(id -u)\"", "\"${EUID:-$(id -u)}\"");
    write(rootfs, "etc/profile", &patched, 0o644).await
}

/// What every template's tree needs from silo, whatever made it: hostname, hosts, the
/// host's resolver, and the agent's mount point.
pub(crate) async fn configure_host_files(rootfs: &Path) -> Result<(), BuildError> {
    write(rootfs, "etc/hostname", &format!("{HOSTNAME}\n"), 0o644).await?;
    write(
        rootfs,
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        0o644,
    )
    .await?;
    write(rootfs, "etc/resolv.conf", &sandbox_resolv_conf(), 0o644).await?;
    let opt_silo = path_in(rootfs, "opt/silo")?;
    tokio::fs::create_dir_all(&opt_silo)
        .await
        .map_err(|source| BuildError::Configure {
            path: opt_silo,
            source,
        })?;
    Ok(())
}

/// The host's resolver configuration as a sandbox reaches it: from its own netns,
/// through NAT. A loopback resolver there (systemd-resolved's stub, 127.0.0.53) would be
/// the sandbox's own loopback, so a host that names only such resolvers gives the
/// upstream ones systemd-resolved lists in its own file instead, as Docker does.
pub(crate) fn sandbox_resolv_conf() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    reachable_resolv_conf(read("/etc/resolv.conf"), || {
        read("/run/systemd/resolve/resolv.conf")
    })
}

/// `host`, unless it names no resolver a netns can reach and `upstream()` does.
fn reachable_resolv_conf(host: String, upstream: impl FnOnce() -> String) -> String {
    // glibc asks 127.0.0.1 when the file names no nameserver: loopback too.
    let reachable = |conf: &str| {
        conf.lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .filter_map(|address| address.trim().parse::<std::net::IpAddr>().ok())
            .any(|ip| !ip.is_loopback())
    };
    if reachable(&host) {
        return host;
    }
    let upstream = upstream();
    if reachable(&upstream) {
        upstream
    } else {
        host
    }
}

pub(crate) async fn write(
    rootfs: &Path,
    rel: &str,
    content: &str,
    mode: u32,
) -> Result<(), BuildError> {
    let path = entry_in(rootfs, rel)?;
    let err = |source| BuildError::Configure {
        path: path.clone(),
        source,
    };
    // Replace, never write through: a symlink there is not followed.
    remove_if_present(&path).await.map_err(err)?;
    tokio::fs::write(&path, content).await.map_err(err)?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .await
        .map_err(err)
}

/// Remove the file (or symlink) at `path`; a missing one is fine.
async fn remove_if_present(path: &Path) -> io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Make `rel` a symlink to `target` (a path as the sandbox sees it), replacing any file.
pub(crate) async fn symlink(rootfs: &Path, rel: &str, target: &str) -> Result<(), BuildError> {
    let path = entry_in(rootfs, rel)?;
    let err = |source| BuildError::Configure {
        path: path.clone(),
        source,
    };
    remove_if_present(&path).await.map_err(err)?;
    tokio::fs::symlink(target, &path).await.map_err(err)
}

/// The host path of the entry `rel` in the tree (its parents resolved inside the tree,
/// made if missing; the entry itself not followed), to replace it.
fn entry_in(rootfs: &Path, rel: &str) -> Result<PathBuf, BuildError> {
    let err = |source| BuildError::Configure {
        path: rootfs.join(rel),
        source,
    };
    let path = crate::inroot::resolve_parent(rootfs, Path::new(rel))
        .map_err(err)?
        .ok_or_else(|| {
            err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "names the root",
            ))
        })?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    Ok(path)
}

/// The host path of `rel` in the tree, every symlink followed inside it: to read it or
/// to make a directory there.
pub(crate) fn path_in(rootfs: &Path, rel: &str) -> Result<PathBuf, BuildError> {
    crate::inroot::resolve(rootfs, Path::new(rel)).map_err(|source| BuildError::Configure {
        path: rootfs.join(rel),
        source,
    })
}

/// Remove the plain files directly in `dir` (apt's downloaded lists and packages).
async fn remove_files_in(dir: &Path) -> Result<(), BuildError> {
    let err = |path: &Path, source| BuildError::Configure {
        path: path.to_owned(),
        source,
    };
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(dir, e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(|e| err(dir, e))? {
        if entry.file_type().await.map_err(|e| err(dir, e))?.is_file() {
            tokio::fs::remove_file(entry.path())
                .await
                .map_err(|e| err(&entry.path(), e))?;
        }
    }
    Ok(())
}

async fn chroot(rootfs: &Path, args: &[&str]) -> Result<(), BuildError> {
    let command = args.join(" ");
    let run = Command::new("chroot")
        .arg(rootfs)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CHROOT_TIMEOUT, run)
        .await
        .map_err(|_| BuildError::Chroot {
            command: command.clone(),
            detail: format!("timed out after {CHROOT_TIMEOUT:?}"),
        })?
        .map_err(|source| BuildError::Spawn {
            program: "chroot",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BuildError::Chroot {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_get_a_resolver_they_can_reach() {
        let host = "nameserver 10.255.255.53\n".to_owned();
        let never = || -> String { panic!("the host's own resolvers are reachable") };
        assert_eq!(reachable_resolv_conf(host.clone(), never), host);

        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n".to_owned();
        let upstream = "nameserver 192.0.2.53\nnameserver 192.0.2.54\n".to_owned();
        assert_eq!(
            reachable_resolv_conf(stub.clone(), || upstream.clone()),
            upstream
        );
        assert_eq!(
            reachable_resolv_conf(String::new(), || upstream.clone()),
            upstream,
            "no nameserver means 127.0.0.1"
        );
        // Nothing better to give: the host's file, as it is.
        assert_eq!(reachable_resolv_conf(stub.clone(), String::new), stub);
    }

    #[test]
    fn temp_dirs_of_live_builders_are_kept() {
        let me = format!(".tmp-abc-{}", std::process::id());
        assert!(builder_alive(&me));
        assert!(!builder_alive(".tmp-abc-4294967295"));
        assert!(!builder_alive("0123456789abcdef"));
        assert!(!builder_dead(&me));
        // A zombie builds nothing.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let zombie = format!(".tmp-abc-{}", child.id());
        while !std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
            .unwrap()
            .contains(") Z")
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(builder_dead(&zombie) && !builder_alive(&zombie));
        child.wait().unwrap();
        assert!(builder_dead(".tmp-abc-4294967295"));
        assert!(builder_dead(".flatten-4294967295"));
        for not_a_build in [
            "0123456789abcdef",
            ".uploads",
            ".tmp-abc",
            ".lock-4294967295",
        ] {
            assert!(!builder_dead(not_a_build), "{not_a_build}");
        }
    }

    #[tokio::test]
    async fn prune_keeps_the_current_build_and_live_temp_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base");
        let keep = TemplatePath {
            rootfs: base.join("aaaa/rootfs"),
            hash: "aaaa".into(),
        };
        let live = format!(".tmp-cccc-{}", std::process::id());
        for name in ["aaaa", "bbbb", ".tmp-dddd-4294967295", live.as_str()] {
            std::fs::create_dir_all(base.join(name).join("rootfs")).expect("mkdir");
        }
        let mut removed = prune_base(dir.path(), &keep).await.expect("prune");
        removed.sort();
        assert_eq!(
            removed,
            [base.join(".tmp-dddd-4294967295"), base.join("bbbb")]
        );
        assert!(base.join("aaaa").is_dir());
        assert!(base.join(live).is_dir());
    }

    #[tokio::test]
    async fn a_complete_build_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let done = dir.path().join("base").join(BASE.hash()).join("rootfs");
        std::fs::create_dir_all(&done).expect("mkdir");
        let mut seen = Vec::new();
        let built = build_base(dir.path(), |p| seen.push(p))
            .await
            .expect("cached");
        assert_eq!(built.rootfs, done);
        assert_eq!(seen, [Progress::Stage(Stage::Cached)]);
    }
}
