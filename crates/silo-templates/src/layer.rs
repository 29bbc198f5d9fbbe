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
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

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
    let built = async {
        progress(Progress::Stage(Stage::CopyParent));
        run(
            Command::new("cp")
                .arg("-a")
                .arg(&parent.rootfs)
                .arg(&work.rootfs),
            "cp",
            &mut progress,
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
            result = run(&mut cmd, "chroot", &mut progress).await;
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

/// Run a build command, reporting its output lines; fail with its last lines.
pub(crate) async fn run(
    cmd: &mut Command,
    program: &'static str,
    progress: &mut (impl FnMut(Progress) + Send),
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
        while let Some(line) = lines.recv().await {
            tail.push(line.clone());
            if tail.len() > 20 {
                tail.remove(0);
            }
            progress(Progress::Line(line));
        }
        child.wait().await
    })
    .await;
    let status = match finished {
        Ok(status) => status.map_err(|source| BuildError::Spawn { program, source })?,
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
    let out_tx = tx.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if out_tx.send(line).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).await.is_err() {
                break;
            }
        }
    });
    rx
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
