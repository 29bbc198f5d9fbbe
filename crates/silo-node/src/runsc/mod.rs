//! The one place that runs `runsc`.
//!
//! [`Runsc`] holds the global options every invocation shares (state root, platform,
//! network mode, overlay) and turns a typed [`Subcommand`] into argv
//! ([`Runsc::argv`], unit-tested below). Every call has a timeout and a failure carries
//! runsc's stderr. [`state`] parses the JSON of `runsc state` and `runsc list`.
//!
//! `runsc run` is special twice over: it is started inside a private mount namespace
//! that hides `/proc/sys/net` (see [`procsys`]), and its stdio goes to a per-sandbox
//! log file rather than a pipe, because the detached sandbox inherits it and keeps it
//! open for its whole life.

pub(crate) mod procsys;
pub mod state;

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use silo_protocol::ids::SandboxId;
use tokio::process::Command;

pub use state::{ContainerState, ContainerStatus};

/// A runsc subcommand with its typed arguments.
#[derive(Debug, Clone, Copy)]
pub enum Subcommand<'a> {
    /// `run --detach --bundle <bundle> <id>`: create and start in one step, the
    /// sandbox's writes kept in a file in `disk` (see [`crate::disk`]).
    RunDetached {
        bundle: &'a Path,
        id: &'a SandboxId,
        disk: &'a Path,
    },
    /// `state <id>`: JSON of one container.
    State { id: &'a SandboxId },
    /// `list --quiet`: the ids of all containers under the root, from runsc's state files
    /// alone (any other format asks each running sandbox's sentry for its status, which a
    /// frozen sandbox never answers: the call then hangs until its timeout).
    List,
    /// `kill [--all] <id> <signal>`.
    Kill {
        id: &'a SandboxId,
        signal: &'a str,
        all: bool,
    },
    /// `delete [--force] <id>`.
    Delete { id: &'a SandboxId, force: bool },
    /// `pause <id>`: freeze every task of the sandbox.
    Pause { id: &'a SandboxId },
    /// `resume <id>`: thaw a paused sandbox.
    Resume { id: &'a SandboxId },
    /// `checkpoint --leave-running --image-path <image> <id>`: save the whole sandbox
    /// (memory, processes, the memory-backed overlay) and keep it as it was.
    Checkpoint {
        image: &'a Path,
        id: &'a SandboxId,
        disk: &'a Path,
    },
    /// `restore --detach --image-path <image> --bundle <bundle> <id>`: a new container
    /// from a checkpoint image.
    RestoreDetached {
        image: &'a Path,
        bundle: &'a Path,
        id: &'a SandboxId,
        disk: &'a Path,
    },
}

impl Subcommand<'_> {
    fn name(&self) -> &'static str {
        match self {
            Subcommand::RunDetached { .. } => "run",
            Subcommand::State { .. } => "state",
            Subcommand::List => "list",
            Subcommand::Kill { .. } => "kill",
            Subcommand::Delete { .. } => "delete",
            Subcommand::Pause { .. } => "pause",
            Subcommand::Resume { .. } => "resume",
            Subcommand::Checkpoint { .. } => "checkpoint",
            Subcommand::RestoreDetached { .. } => "restore",
        }
    }

    /// The sandbox's disk, for the subcommands that make or save its filesystem.
    fn disk(&self) -> Option<&Path> {
        match self {
            Subcommand::RunDetached { disk, .. }
            | Subcommand::Checkpoint { disk, .. }
            | Subcommand::RestoreDetached { disk, .. } => Some(disk),
            _ => None,
        }
    }
}

/// Errors from running runsc.
#[derive(Debug, thiserror::Error)]
pub enum RunscError {
    #[error("spawn {binary} {subcommand}; is runsc installed?")]
    Spawn {
        binary: PathBuf,
        subcommand: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("runsc {subcommand} timed out after {timeout:?}")]
    Timeout {
        subcommand: &'static str,
        timeout: Duration,
    },
    #[error("runsc {subcommand} exited with {status}: {stderr}")]
    Failed {
        subcommand: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("open runsc log file {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parse output of runsc {subcommand}")]
    Parse {
        subcommand: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A configured runsc binary: the global flags shared by every call.
#[derive(Debug, Clone)]
pub struct Runsc {
    pub binary: PathBuf,
    /// `--root`: runsc's state directory, silo's alone.
    pub root: PathBuf,
    /// `--platform`: `systrap`, `ptrace` or `kvm`.
    pub platform: String,
    /// Limit for any one call.
    pub timeout: Duration,
}

impl Runsc {
    /// The full argv (without the binary) for `cmd`.
    pub fn argv(&self, cmd: &Subcommand<'_>) -> Vec<OsString> {
        let mut argv = vec![
            path_flag("--root=", &self.root),
            format!("--platform={}", self.platform).into(),
            "--network=sandbox".into(),
            // Lets checkpoint drop open TCP connections instead of refusing to save.
            "--net-disconnect-ok".into(),
            "--cpu-num-from-quota".into(),
        ];
        if let Some(disk) = cmd.disk() {
            // Every writable mount (root, /tmp) gets an overlay whose upper layer is a
            // file in the sandbox's disk: the disk's size bounds them all.
            argv.push(path_flag("--overlay2=all:dir=", disk));
        }
        argv.push(cmd.name().into());
        match *cmd {
            Subcommand::RunDetached { bundle, id, .. } => {
                argv.push("--detach".into());
                argv.push("--bundle".into());
                argv.push(bundle.into());
                argv.push(id.as_str().into());
            }
            Subcommand::State { id } => argv.push(id.as_str().into()),
            Subcommand::List => argv.push("--quiet".into()),
            Subcommand::Kill { id, signal, all } => {
                if all {
                    argv.push("--all".into());
                }
                argv.push(id.as_str().into());
                argv.push(signal.into());
            }
            Subcommand::Delete { id, force } => {
                if force {
                    argv.push("--force".into());
                }
                argv.push(id.as_str().into());
            }
            Subcommand::Pause { id } | Subcommand::Resume { id } => argv.push(id.as_str().into()),
            Subcommand::Checkpoint { image, id, .. } => {
                argv.push("--leave-running".into());
                argv.push(path_flag("--image-path=", image));
                argv.push(id.as_str().into());
            }
            Subcommand::RestoreDetached {
                image, bundle, id, ..
            } => {
                argv.push("--detach".into());
                argv.push(path_flag("--image-path=", image));
                argv.push("--bundle".into());
                argv.push(bundle.into());
                argv.push(id.as_str().into());
            }
        }
        argv
    }

    /// Run `cmd` to completion with piped output; returns stdout.
    pub async fn output(&self, cmd: &Subcommand<'_>) -> Result<Vec<u8>, RunscError> {
        let subcommand = cmd.name();
        let child = Command::new(&self.binary)
            .args(self.argv(cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| self.spawn_error(subcommand, source))?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| RunscError::Timeout {
                subcommand,
                timeout: self.timeout,
            })?
            .map_err(|source| self.spawn_error(subcommand, source))?;
        if !out.status.success() {
            return Err(RunscError::Failed {
                subcommand,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out.stdout)
    }

    /// `runsc run --detach`, started in a mount namespace whose /proc/sys hides `net`
    /// (runsc 20240729 otherwise refuses `--network=sandbox` on new kernels). Its stdio
    /// and that of the sandbox's first process go to `log` (appended).
    pub async fn run_detached(
        &self,
        bundle: &Path,
        id: &SandboxId,
        disk: &Path,
        log: &Path,
    ) -> Result<(), RunscError> {
        self.detached(&Subcommand::RunDetached { bundle, id, disk }, log)
            .await
    }

    /// `runsc restore --detach`, set up as [`Runsc::run_detached`] is (the restored
    /// sandbox makes the same network check).
    pub async fn restore_detached(
        &self,
        image: &Path,
        bundle: &Path,
        id: &SandboxId,
        disk: &Path,
        log: &Path,
    ) -> Result<(), RunscError> {
        self.detached(
            &Subcommand::RestoreDetached {
                image,
                bundle,
                id,
                disk,
            },
            log,
        )
        .await
    }

    async fn detached(&self, cmd: &Subcommand<'_>, log: &Path) -> Result<(), RunscError> {
        let subcommand = cmd.name();
        let open_log = |path: &Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| RunscError::OpenLog {
                    path: path.to_owned(),
                    source,
                })
        };
        let stdout = open_log(log)?;
        let stderr = open_log(log)?;
        let log_start = stdout.metadata().map(|m| m.len()).unwrap_or(0);
        let mut command = Command::new(&self.binary);
        command
            .args(self.argv(cmd))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        procsys::install(&mut command);
        let mut child = command
            .spawn()
            .map_err(|source| self.spawn_error(subcommand, source))?;
        let status = tokio::time::timeout(self.timeout, child.wait())
            .await
            .map_err(|_| RunscError::Timeout {
                subcommand,
                timeout: self.timeout,
            })?
            .map_err(|source| self.spawn_error(subcommand, source))?;
        if !status.success() {
            return Err(RunscError::Failed {
                subcommand,
                status,
                stderr: log_tail(log, log_start),
            });
        }
        Ok(())
    }

    /// The state of one container.
    pub async fn state(&self, id: &SandboxId) -> Result<ContainerState, RunscError> {
        let cmd = Subcommand::State { id };
        let out = self.output(&cmd).await?;
        state::parse_state(&out).map_err(|source| RunscError::Parse {
            subcommand: cmd.name(),
            source,
        })
    }

    /// The id of every container under this root.
    pub async fn list(&self) -> Result<Vec<String>, RunscError> {
        let out = self.output(&Subcommand::List).await?;
        Ok(String::from_utf8_lossy(&out)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Force-delete a container (killing its sandbox). A container runsc does not know
    /// is already gone: `Ok`.
    pub async fn delete_force(&self, id: &SandboxId) -> Result<(), RunscError> {
        match self.output(&Subcommand::Delete { id, force: true }).await {
            Ok(_) => Ok(()),
            Err(err) => {
                // runsc's "not found" wording varies by version; ask it instead.
                let still_there = self.list().await?.iter().any(|c| c == id.as_str());
                if still_there {
                    Err(err)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Run a subcommand whose output does not matter.
    pub async fn call(&self, cmd: &Subcommand<'_>) -> Result<(), RunscError> {
        self.output(cmd).await.map(drop)
    }

    fn spawn_error(&self, subcommand: &'static str, source: io::Error) -> RunscError {
        RunscError::Spawn {
            binary: self.binary.clone(),
            subcommand,
            source,
        }
    }
}

fn path_flag(flag: &str, path: &Path) -> OsString {
    let mut arg = OsString::from(flag);
    arg.push(path);
    arg
}

/// The last part of what was appended to `path` since byte `from`, for error messages.
fn log_tail(path: &Path, from: u64) -> String {
    const MAX: usize = 2000;
    let text = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    let new = &text[start..];
    let new = &new[new.len().saturating_sub(MAX)..];
    let text = String::from_utf8_lossy(new).trim().to_owned();
    if text.is_empty() {
        format!("(no output; see {})", path.display())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runsc() -> Runsc {
        Runsc {
            binary: "/usr/bin/runsc".into(),
            root: "/var/lib/silo/runsc".into(),
            platform: "systrap".into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn argv(cmd: Subcommand<'_>) -> Vec<String> {
        runsc()
            .argv(&cmd)
            .into_iter()
            .map(|s| s.into_string().expect("utf-8 in test"))
            .collect()
    }

    const GLOBAL: [&str; 5] = [
        "--root=/var/lib/silo/runsc",
        "--platform=systrap",
        "--network=sandbox",
        "--net-disconnect-ok",
        "--cpu-num-from-quota",
    ];
    const DISK: &str = "--overlay2=all:dir=/s/iabc/disk";

    fn expect(rest: &[&str]) -> Vec<String> {
        GLOBAL.iter().chain(rest).map(|s| s.to_string()).collect()
    }

    #[test]
    fn argv_for_each_subcommand() {
        let id: SandboxId = "iabcdefghij012345678".parse().expect("valid id");
        let bundle = Path::new("/b/iabc");
        assert_eq!(
            argv(Subcommand::RunDetached {
                bundle,
                id: &id,
                disk: Path::new("/s/iabc/disk")
            }),
            expect(&[
                DISK,
                "run",
                "--detach",
                "--bundle",
                "/b/iabc",
                "iabcdefghij012345678"
            ])
        );
        assert_eq!(
            argv(Subcommand::State { id: &id }),
            expect(&["state", "iabcdefghij012345678"])
        );
        assert_eq!(argv(Subcommand::List), expect(&["list", "--quiet"]));
        assert_eq!(
            argv(Subcommand::Kill {
                id: &id,
                signal: "KILL",
                all: true
            }),
            expect(&["kill", "--all", "iabcdefghij012345678", "KILL"])
        );
        assert_eq!(
            argv(Subcommand::Delete {
                id: &id,
                force: true
            }),
            expect(&["delete", "--force", "iabcdefghij012345678"])
        );
        assert_eq!(
            argv(Subcommand::Delete {
                id: &id,
                force: false
            }),
            expect(&["delete", "iabcdefghij012345678"])
        );
    }

    #[test]
    fn argv_for_checkpoint_and_restore() {
        let id: SandboxId = "iabcdefghij012345678".parse().expect("valid id");
        let image = Path::new("/s/iabc/checkpoint");
        assert_eq!(
            argv(Subcommand::Checkpoint {
                image,
                id: &id,
                disk: Path::new("/s/iabc/disk")
            }),
            expect(&[
                DISK,
                "checkpoint",
                "--leave-running",
                "--image-path=/s/iabc/checkpoint",
                "iabcdefghij012345678"
            ])
        );
        assert_eq!(
            argv(Subcommand::RestoreDetached {
                image,
                bundle: Path::new("/s/iabc"),
                id: &id,
                disk: Path::new("/s/iabc/disk")
            }),
            expect(&[
                DISK,
                "restore",
                "--detach",
                "--image-path=/s/iabc/checkpoint",
                "--bundle",
                "/s/iabc",
                "iabcdefghij012345678"
            ])
        );
        assert_eq!(
            argv(Subcommand::Pause { id: &id }),
            expect(&["pause", "iabcdefghij012345678"])
        );
    }

    #[tokio::test]
    async fn failure_carries_stderr() {
        let mut r = runsc();
        r.binary = "/bin/sh".into();
        // `sh --root=...` fails with a message on stderr: stands in for a failing runsc.
        let err = r
            .output(&Subcommand::List)
            .await
            .expect_err("sh rejects flags");
        match err {
            RunscError::Failed { stderr, .. } => assert!(!stderr.is_empty()),
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_binary_is_a_spawn_error() {
        let mut r = runsc();
        r.binary = "/nonexistent/runsc".into();
        let err = r.output(&Subcommand::List).await.expect_err("no binary");
        assert!(matches!(err, RunscError::Spawn { .. }));
    }
}
