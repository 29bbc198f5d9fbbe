//! Contexts: each one a kernel with its own state, a language and a working directory.
//!
//! A context's kernel can be replaced (restart) while requests hold the context, so the
//! kernel sits behind a small lock and executions take an `Arc` of the current one. Each
//! context runs one execution at a time (`exec`), as a notebook does. The default context of
//! a language is created on first use; a per-language lock makes concurrent first uses share
//! one kernel.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use crate::config::Config;
use crate::kernel::{Kernel, KernelError, StartOptions};
use crate::language::Language;
use crate::snippets;

/// Errors of the context registry.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("context {0} not found")]
    NotFound(String),
    #[error("no kernel is installed for language {language}; available: {available}")]
    NoKernel {
        language: Language,
        available: String,
    },
    #[error("working directory {0} does not exist")]
    NoSuchCwd(PathBuf),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A context as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
}

pub(crate) struct Context {
    pub id: String,
    pub language: Language,
    pub cwd: PathBuf,
    kernel: Mutex<Arc<Kernel>>,
    /// The global env vars the current kernel has, to apply only what changed.
    globals: Mutex<BTreeMap<String, String>>,
    /// Held for the whole of an execution, and by restart while it swaps the kernel.
    pub exec: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("context lock poisoned")
}

impl Context {
    pub fn kernel(&self) -> Arc<Kernel> {
        lock(&self.kernel).clone()
    }

    pub fn info(&self) -> ContextInfo {
        ContextInfo {
            id: self.id.clone(),
            language: self.language.to_string(),
            cwd: self.cwd.to_string_lossy().into_owned(),
        }
    }

    /// The code that brings the kernel's global env vars up to `current`, and records them
    /// as applied. Call with `exec` held.
    pub fn sync_globals(&self, current: &BTreeMap<String, String>) -> Option<String> {
        let mut applied = lock(&self.globals);
        let code = snippets::change_env(self.language, &applied, current);
        *applied = current.clone();
        code
    }
}

pub(crate) struct Contexts {
    config: Config,
    all: RwLock<HashMap<String, Arc<Context>>>,
    defaults: HashMap<Language, tokio::sync::Mutex<Option<String>>>,
}

impl Contexts {
    pub fn new(config: Config) -> Self {
        let defaults = Language::ALL
            .into_iter()
            .map(|l| (l, tokio::sync::Mutex::new(None)))
            .collect();
        Contexts {
            config,
            all: RwLock::default(),
            defaults,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Comma-separated languages that have a kernel, for error messages.
    pub fn available(&self) -> String {
        let names: Vec<&str> = self.config.kernels.keys().map(|l| l.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Context>, ContextError> {
        self.all
            .read()
            .expect("contexts lock poisoned")
            .get(id)
            .cloned()
            .ok_or_else(|| ContextError::NotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut list: Vec<ContextInfo> = self
            .all
            .read()
            .expect("contexts lock poisoned")
            .values()
            .map(|c| c.info())
            .collect();
        list.sort_by(|a, b| (&a.language, &a.id).cmp(&(&b.language, &b.id)));
        list
    }

    /// The default context of `language`, created (with its kernel started) on first use.
    pub async fn default_for(&self, language: Language) -> Result<Arc<Context>, ContextError> {
        let mut slot = self
            .defaults
            .get(&language)
            .expect("every language has a default slot")
            .lock()
            .await;
        if let Some(id) = slot.as_deref() {
            if let Ok(ctx) = self.get(id) {
                return Ok(ctx);
            }
        }
        let ctx = self.create(language, None).await?;
        *slot = Some(ctx.id.clone());
        Ok(ctx)
    }

    /// A new context with a freshly started kernel.
    pub async fn create(
        &self,
        language: Language,
        cwd: Option<PathBuf>,
    ) -> Result<Arc<Context>, ContextError> {
        let cwd = cwd.unwrap_or_else(|| self.config.default_cwd.clone());
        if !cwd.is_dir() {
            return Err(ContextError::NoSuchCwd(cwd));
        }
        let (kernel, globals) = self.start_kernel(language, &cwd).await?;
        let ctx = Arc::new(Context {
            id: uuid::Uuid::new_v4().to_string(),
            language,
            cwd,
            kernel: Mutex::new(Arc::new(kernel)),
            globals: Mutex::new(globals),
            exec: tokio::sync::Mutex::new(()),
        });
        self.all
            .write()
            .expect("contexts lock poisoned")
            .insert(ctx.id.clone(), ctx.clone());
        tracing::info!(context = %ctx.id, %language, cwd = %ctx.cwd.display(), "context created");
        Ok(ctx)
    }

    /// Removes the context and kills its kernel.
    pub async fn delete(&self, id: &str) -> Result<(), ContextError> {
        let ctx = self
            .all
            .write()
            .expect("contexts lock poisoned")
            .remove(id)
            .ok_or_else(|| ContextError::NotFound(id.to_string()))?;
        ctx.kernel().kill().await;
        tracing::info!(context = %id, "context deleted");
        Ok(())
    }

    /// Replaces the context's kernel by a fresh one: all state is lost, the id stays.
    pub async fn restart(&self, id: &str) -> Result<(), ContextError> {
        let ctx = self.get(id)?;
        // Kill first: a running (maybe endless) execution then ends and releases `exec`.
        ctx.kernel().kill().await;
        let _exec = ctx.exec.lock().await;
        let (kernel, globals) = self.start_kernel(ctx.language, &ctx.cwd).await?;
        *lock(&ctx.kernel) = Arc::new(kernel);
        *lock(&ctx.globals) = globals;
        tracing::info!(context = %id, "context restarted");
        Ok(())
    }

    /// Kills every kernel; for the agent's shutdown.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Context>> = self
            .all
            .write()
            .expect("contexts lock poisoned")
            .drain()
            .map(|(_, c)| c)
            .collect();
        for ctx in all {
            ctx.kernel().kill().await;
        }
    }

    async fn start_kernel(
        &self,
        language: Language,
        cwd: &std::path::Path,
    ) -> Result<(Kernel, BTreeMap<String, String>), ContextError> {
        let spec = self
            .config
            .kernels
            .get(&language)
            .ok_or_else(|| ContextError::NoKernel {
                language,
                available: self.available(),
            })?;
        let globals = (self.config.global_envs)();
        let env = self.config.kernel_env(&globals);
        let opts = StartOptions {
            cwd,
            env: &env,
            user: self.config.user.as_ref(),
            runtime_dir: &self.config.runtime_dir,
            path: &self.config.path,
        };
        let kernel = match language {
            Language::JavaScript | Language::TypeScript if self.config.node_driver => {
                Kernel::start_node(spec, opts).await?
            }
            _ => Kernel::start(spec, opts).await?,
        };
        if language == Language::Python {
            setup_python(&kernel).await;
        }
        Ok((kernel, globals))
    }
}

/// Runs [`snippets::PYTHON_SETUP`]. A failure only costs the extra formats, so it is logged,
/// not returned.
async fn setup_python(kernel: &Kernel) {
    if let Err(e) = kernel.run_silent(snippets::PYTHON_SETUP).await {
        tracing::warn!(error = %e, "python set-up failed");
    }
}
