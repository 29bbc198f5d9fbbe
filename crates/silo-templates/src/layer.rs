//! Templates derived from another template: the parent's rootfs copied, then shell steps
//! run in a chroot of it, with the host's network (to reach package registries).
//!
//! Cached like every template ([`crate::cache`]): the hash covers the parent build's hash
//! and the steps' text, so a new parent or a changed step makes a new build. This is the
//! shape `RUN` lines of Dockerfile templates take (issue 6).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::base::{BuildError, Progress, Stage, TemplatePath};
use crate::cache::{self, Slot};

/// One step may download and install hundreds of megabytes.
const STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The host's CA bundle, copied into the build (and removed after it) so package
/// clients in the steps trust what the host trusts, e.g. a TLS-inspecting proxy's CA.
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const BUILD_CA_BUNDLE: &str = "tmp/silo-build-ca.crt";
/// Variables that point pip, npm/node, requests and OpenSSL at a CA bundle.
const CA_BUNDLE_VARS: [&str; 5] = [
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "npm_config_cafile",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
];

/// A template made of a parent and shell steps.
#[derive(Debug)]
pub struct Layer {
    pub name: &'static str,
    pub steps: &'static [&'static str],
}

/// `code-interpreter`: Jupyter kernels for Python (ipykernel, with the data stack),
/// JavaScript/TypeScript (tslab) and bash, which silo-agent serves on port 49999.
pub const CODE_INTERPRETER: Layer = Layer {
    name: "code-interpreter",
    steps: &[
        "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv npm",
        "python3 -m venv /opt/python && /opt/python/bin/pip install --no-cache-dir -q \
         ipykernel numpy pandas matplotlib scipy requests bash_kernel",
        "/opt/python/bin/python -m ipykernel install --prefix /usr/local --name python3 \
         && /opt/python/bin/python -m bash_kernel.install --prefix /usr/local",
        "npm install -g --no-audit --no-fund tslab && tslab install --python /opt/python/bin/python --prefix /usr/local",
        // The user may `pip install` into the kernel's venv; matplotlib's font cache is
        // built once here instead of in every sandbox's first plot.
        "chown -R user:user /opt/python \
         && su user -s /bin/sh -c '/opt/python/bin/python -c \"import matplotlib.pyplot\"'",
        "apt-get clean && rm -rf /var/lib/apt/lists/* /root/.npm /root/.cache",
    ],
};

impl Layer {
    /// 16 hex digits of SHA-256 over the parent's hash and the steps.
    pub fn hash(&self, parent: &TemplatePath) -> String {
        let mut sha = Sha256::new();
        sha.update(format!("parent={}\n", parent.hash));
        for step in self.steps {
            sha.update(format!("step={step}\n"));
        }
        sha.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Build `layer` on `parent` under `templates_dir`, or reuse a complete build.
pub async fn build_layer(
    templates_dir: &Path,
    layer: &Layer,
    parent: &TemplatePath,
    mut progress: impl FnMut(Progress) + Send,
) -> Result<TemplatePath, BuildError> {
    let work = match cache::slot(&templates_dir.join(layer.name), &layer.hash(parent)).await? {
        Slot::Cached(done) => {
            progress(Progress::Stage(Stage::Cached));
            return Ok(done);
        }
        Slot::Build(work) => work,
    };
    // Only `silo template build` builds these, and nothing cancels it: a Ctrl-C ends
    // the whole process.
    let never = CancellationToken::new();
    let built = async {
        progress(Progress::Stage(Stage::CopyParent));
        run(
            Command::new("cp")
                .arg("-a")
                .arg(&parent.rootfs)
                .arg(&work.rootfs),
            "cp",
            &mut progress,
            &never,
        )
        .await?;
        let ca_bundle = work.rootfs.join(BUILD_CA_BUNDLE);
        let has_ca = tokio::fs::copy(HOST_CA_BUNDLE, &ca_bundle).await.is_ok();
        let mounts = ChrootMounts::mount(&work.rootfs).await?;
        let mut result = Ok(());
        for (index, step) in layer.steps.iter().enumerate() {
            progress(Progress::Stage(Stage::Step {
                index: index + 1,
                total: layer.steps.len(),
            }));
            let mut cmd = Command::new("chroot");
            cmd.arg(&work.rootfs).args(["/bin/sh", "-c", step]);
            if has_ca {
                for var in CA_BUNDLE_VARS {
                    cmd.env(var, format!("/{BUILD_CA_BUNDLE}"));
                }
            }
            result = run(&mut cmd, "chroot", &mut progress, &never).await;
            if result.is_err() {
                break;
            }
        }
        mounts.unmount().await;
        let _ = tokio::fs::remove_file(&ca_bundle).await;
        result
    }
    .await;
    if let Err(e) = built {
        work.discard().await;
        return Err(e);
    }
    progress(Progress::Stage(Stage::Publish));
    work.publish().await
}

/// Run a build command, reporting its output lines; fail with its last lines. Once
/// `cancel` is cancelled the command is killed and reaped, and the run fails with
/// [`BuildError::Cancelled`]: the caller's undo (a container's delete, an unmount) then
/// finds it ended.
pub(crate) async fn run(
    cmd: &mut Command,
    program: &'static str,
    progress: &mut (impl FnMut(Progress) + Send),
    cancel: &CancellationToken,
) -> Result<(), BuildError> {
    let command = format!("{:?}", cmd.as_std());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOME", "/root")
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| BuildError::Spawn { program, source })?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut lines = merged_lines(stdout, stderr);
    let mut tail: Vec<String> = Vec::new();
    let finished = tokio::time::timeout(STEP_TIMEOUT, async {
        let ended = async {
            while let Some(line) = lines.recv().await {
                tail.push(line.clone());
                if tail.len() > 20 {
                    tail.remove(0);
                }
                progress(Progress::Line(line));
            }
            child.wait().await
        };
        tokio::select! {
            status = ended => Some(status),
            () = cancel.cancelled() => None,
        }
    })
    .await;
    let status = match finished {
        Ok(Some(status)) => status.map_err(|source| BuildError::Spawn { program, source })?,
        Ok(None) => {
            // Its output is not waited for: what it started (a runsc sandbox) may hold
            // the pipes until the caller's undo ends it.
            let _ = child.kill().await;
            return Err(BuildError::Cancelled);
        }
        Err(_) => {
            return Err(BuildError::Chroot {
                command,
                detail: format!("timed out after {STEP_TIMEOUT:?}"),
            })
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Chroot {
            command,
            detail: format!("{status}; last output:\n{}", tail.join("\n")),
        })
    }
}

/// Both output pipes, merged line by line.
fn merged_lines(
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
) -> tokio::sync::mpsc::Receiver<String> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(forward_lines(stdout, tx.clone()));
    tokio::spawn(forward_lines(stderr, tx));
    rx
}

/// The longest output line passed on whole; a longer one comes in pieces of this size
/// (a line without a newline must not grow in memory without end).
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Send `pipe`'s lines to `tx` until the pipe ends, invalid UTF-8 replaced: a reader
/// that stopped early would close the pipe and fail the step's writer with EPIPE. It
/// stops only when no one receives (the step is over and its process killed).
async fn forward_lines(pipe: impl AsyncRead + Unpin, tx: tokio::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        let room = (MAX_LINE_BYTES - line.len()) as u64;
        let read = (&mut reader).take(room).read_until(b'\n', &mut line).await;
        if matches!(read, Ok(0) | Err(_)) {
            // The pipe ended (an error ends it too: nothing more can be read from it).
            if !line.is_empty() {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned()).await;
            }
            return;
        }
        let next = if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            Vec::new()
        } else if line.len() == MAX_LINE_BYTES {
            // A piece of a long line: a character cut at its end goes on to the next
            // piece rather than turning into two replacement characters.
            let cut = unfinished_char(&line);
            line.split_off(line.len() - cut)
        } else {
            // The last line, unterminated: the next read finds the end.
            continue;
        };
        if tx
            .send(String::from_utf8_lossy(&line).into_owned())
            .await
            .is_err()
        {
            return;
        }
        line = next;
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character they do not finish.
fn unfinished_char(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        if byte & 0b1100_0000 != 0b1000_0000 {
            let len = match byte {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if len > back { back } else { 0 };
        }
    }
    0
}

/// `mount ARGS TARGET`; a failure says the command and mount's own message.
pub(crate) async fn mount(args: &[&str], target: &Path) -> Result<(), BuildError> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .await
        .map_err(|source| BuildError::Spawn {
            program: "mount",
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(BuildError::Chroot {
        command: format!("mount {} {}", args.join(" "), target.display()),
        detail: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}

/// /proc and /dev inside the chroot for the steps (package scripts need them); always
/// unmounted before the build is published or discarded.
struct ChrootMounts {
    mounted: Vec<std::path::PathBuf>,
}

impl ChrootMounts {
    async fn mount(rootfs: &Path) -> Result<ChrootMounts, BuildError> {
        let mut mounts = ChrootMounts {
            mounted: Vec::new(),
        };
        for (target, args) in [
            ("proc", vec!["-t", "proc", "proc"]),
            ("dev", vec!["--rbind", "/dev"]),
        ] {
            let path = rootfs.join(target);
            if let Err(e) = mount(&args, &path).await {
                mounts.unmount().await;
                return Err(e);
            }
            mounts.mounted.push(path);
        }
        Ok(mounts)
    }

    async fn unmount(self) {
        for path in self.mounted.iter().rev() {
            // Lazy and recursive: /dev was bound with its submounts.
            let _ = Command::new("umount")
                .arg("-R")
                .arg("-l")
                .arg(path)
                .status()
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(bytes: &[u8]) -> Vec<String> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let reader = tokio::spawn(forward_lines(std::io::Cursor::new(bytes.to_vec()), tx));
        let mut lines = Vec::new();
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
        reader.await.unwrap();
        lines
    }

    #[tokio::test]
    async fn output_lines_are_read_whole_lossy_and_cut_to_a_bound() {
        assert_eq!(lines_of(b"a\r\nb\n\nlast").await, ["a", "b", "", "last"]);
        // Invalid UTF-8 is replaced, and reading goes on after it.
        assert_eq!(
            lines_of(b"ok\n\xff\xfe bad\nafter\n").await,
            ["ok", "\u{fffd}\u{fffd} bad", "after"]
        );
        // A long line comes in pieces; a character across a cut stays whole.
        let mut long = vec![b'x'; MAX_LINE_BYTES - 1];
        long.extend("é".as_bytes());
        long.extend(vec![b'y'; MAX_LINE_BYTES + 5]);
        long.push(b'\n');
        let pieces = lines_of(&long).await;
        assert_eq!(
            pieces.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE_BYTES - 1, MAX_LINE_BYTES, 7]
        );
        assert!(pieces[1].starts_with('é'));
        assert_eq!(pieces.concat().len(), long.len() - 1);
    }

    #[tokio::test]
    async fn a_step_writing_invalid_utf8_then_a_flood_is_read_to_its_end() {
        // Once the reader stopped at the bad line, `head` died of EPIPE and failed it.
        let mut lines = 0;
        run(
            Command::new("sh").args(["-c", "printf '\\377\\n'; yes | head -n 200000"]),
            "sh",
            &mut |progress| {
                if let Progress::Line(_) = progress {
                    lines += 1;
                }
            },
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(lines, 200_001);
    }

    #[tokio::test]
    async fn a_cancelled_command_is_killed_and_reaped() {
        let cancel = CancellationToken::new();
        let mut pid = None;
        let ran = run(
            // Its pid stays the command's through the exec.
            Command::new("sh").args(["-c", "echo $$; exec sleep 600"]),
            "sh",
            &mut |progress| {
                if let Progress::Line(line) = progress {
                    pid = Some(line);
                    cancel.cancel();
                }
            },
            &cancel,
        )
        .await;
        assert!(matches!(ran, Err(BuildError::Cancelled)), "{ran:?}");
        let pid = pid.expect("the command printed its pid");
        // Gone, not a zombie left for someone else to reap.
        assert!(!Path::new("/proc").join(pid).exists());
    }

    #[test]
    fn hash_follows_parent_and_steps() {
        let parent = |hash: &str| TemplatePath {
            rootfs: "/x".into(),
            hash: hash.into(),
        };
        let a = CODE_INTERPRETER.hash(&parent("p1"));
        assert_eq!(a.len(), 16);
        assert_eq!(a, CODE_INTERPRETER.hash(&parent("p1")));
        assert_ne!(a, CODE_INTERPRETER.hash(&parent("p2")));
        let other = Layer {
            name: "code-interpreter",
            steps: &["true"],
        };
        assert_ne!(a, other.hash(&parent("p1")));
    }
}
