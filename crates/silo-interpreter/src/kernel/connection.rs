//! The connection file handed to a kernel: where its sockets listen and the key that signs
//! every message.
//!
//! Ports are chosen by binding port 0 on 127.0.0.1 and releasing it, as Jupyter's own
//! launcher does; the kernel binds them a moment later. The file is written 0600 and owned by
//! the kernel's user, because the HMAC key in it is what stops other sandbox processes from
//! driving the kernel.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The signature scheme we write and the only one we implement.
pub const SIGNATURE_SCHEME: &str = "hmac-sha256";

const IP: &str = "127.0.0.1";

/// Contents of a Jupyter connection file.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub ip: String,
    pub transport: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
    pub signature_scheme: String,
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Fresh ports and a fresh random key.
    pub fn generate(kernel_name: &str) -> std::io::Result<Self> {
        // Hold all five listeners until every port is chosen, so none is picked twice.
        let listeners = (0..5)
            .map(|_| std::net::TcpListener::bind((IP, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(ConnectionInfo {
            ip: IP.into(),
            transport: "tcp".into(),
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: uuid::Uuid::new_v4().simple().to_string(),
            signature_scheme: SIGNATURE_SCHEME.into(),
            kernel_name: kernel_name.into(),
        })
    }

    /// `tcp://127.0.0.1:<port>` for a zeromq connect.
    pub fn endpoint(&self, port: u16) -> String {
        format!("{}://{}:{}", self.transport, self.ip, port)
    }

    /// Writes the file at `path` (mode 0600), owned by `owner` (uid, gid) when given.
    pub fn write(&self, path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(&json)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
        file.sync_all()
    }
}

/// A connection file that is removed when dropped, so a dead kernel leaves no key behind.
#[derive(Debug)]
pub struct ConnectionFile {
    pub path: PathBuf,
}

impl Drop for ConnectionFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "removing connection file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_ports_and_writes_private_file() {
        let info = ConnectionInfo::generate("python3").expect("generate");
        let mut ports = vec![
            info.shell_port,
            info.iopub_port,
            info.stdin_port,
            info.control_port,
            info.hb_port,
        ];
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        assert_eq!(info.key.len(), 32);
        assert_eq!(
            info.endpoint(info.shell_port),
            format!("tcp://127.0.0.1:{}", info.shell_port)
        );

        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("kernel.json");
        info.write(&path, None).expect("write");
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let back: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(back["signature_scheme"], "hmac-sha256");
        assert_eq!(back["shell_port"], info.shell_port);
        {
            let _guard = ConnectionFile { path: path.clone() };
        }
        assert!(!path.exists());
    }
}
