//! What the embedding agent tells the interpreter: the kernels there are, who runs them,
//! where, and with which environment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::kernelspec::KernelSpec;
use crate::language::Language;

/// The account kernels run as (the agent itself runs as root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

/// Returns the sandbox-wide environment variables (envd's `/envs`) at the time of the call.
pub type GlobalEnvs = Arc<dyn Fn() -> BTreeMap<String, String> + Send + Sync>;

/// Interpreter configuration. Build with [`Config::new`] and adjust the public fields.
#[derive(Clone)]
pub struct Config {
    /// The kernel to start per language, usually from [`crate::kernelspec::discover`].
    pub kernels: BTreeMap<Language, KernelSpec>,
    /// Working directory of contexts created without one. Default `/home/user`.
    pub default_cwd: PathBuf,
    /// Who kernels run as. `None` (default) runs them as the agent's own user, for tests.
    pub user: Option<KernelUser>,
    /// Sandbox-wide env vars, read when a kernel starts and before every execution (so a
    /// later `/init` still reaches kernels started earlier). Default: none.
    pub global_envs: GlobalEnvs,
    /// `PATH` of kernel processes, also used to find a kernelspec's program. Default: the
    /// Debian login PATH.
    pub path: String,
    /// Where connection files are written. Default: the system temp dir.
    pub runtime_dir: PathBuf,
    /// Languages whose default context [`crate::Interpreter::start_default_kernels`] starts.
    /// Default: python.
    pub autostart: Vec<Language>,
    /// A `keepalive` line is sent after this much silence during an execution; it is also
    /// how a vanished client is noticed. Default 1 s.
    pub keepalive: Duration,
    /// Run JavaScript and TypeScript on silo's Node.js driver ([`crate::kernel::node`])
    /// instead of their kernelspec's own kernel, which then only vouches that Node and the
    /// TypeScript compiler are installed. Default true: tslab reports neither results nor
    /// errors the way E2B's clients expect.
    pub node_driver: bool,
}

impl Config {
    pub fn new(kernels: BTreeMap<Language, KernelSpec>) -> Self {
        Config {
            kernels,
            default_cwd: PathBuf::from("/home/user"),
            user: None,
            global_envs: Arc::new(BTreeMap::new),
            path: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            runtime_dir: std::env::temp_dir(),
            autostart: vec![Language::Python],
            keepalive: Duration::from_secs(1),
            node_driver: true,
        }
    }

    /// The environment a new kernel starts with: the login basics, then the global vars.
    pub(crate) fn kernel_env(
        &self,
        globals: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert("PATH".into(), self.path.clone());
        env.insert("LANG".into(), "C.UTF-8".into());
        env.insert("SHELL".into(), "/bin/bash".into());
        match &self.user {
            Some(user) => {
                env.insert("HOME".into(), user.home.to_string_lossy().into_owned());
                env.insert("USER".into(), user.name.clone());
                env.insert("LOGNAME".into(), user.name.clone());
            }
            None => {
                for key in ["HOME", "USER", "LOGNAME"] {
                    if let Ok(value) = std::env::var(key) {
                        env.insert(key.into(), value);
                    }
                }
            }
        }
        env.extend(globals.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}
