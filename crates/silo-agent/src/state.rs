//! What every handler shares: configuration, the settings `POST /init` changes, the
//! process table, the filesystem watchers and the account files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::Config;
use crate::error::Error;
use crate::filesystem::path::resolve;
use crate::filesystem::watch::Watchers;
use crate::process::{ProcessTable, Reaper};
use crate::users::{User, UserDb, Users};

/// Settings the control plane may change at run time through `POST /init`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access_token: Option<String>,
    /// Added to every process's environment, and served by `GET /envs`.
    pub env_vars: BTreeMap<String, String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub max_upload_bytes: u64,
    pub settings: RwLock<Settings>,
    pub user_db: UserDb,
    pub processes: Arc<ProcessTable>,
    pub watchers: Watchers,
    /// True once the code interpreter's default kernels have started, failed to, or
    /// there is no interpreter.
    pub kernels_settled: tokio::sync::watch::Sender<bool>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(config: &Config, reaper: Arc<Reaper>) -> Self {
        AppState(Arc::new(Inner {
            max_upload_bytes: config.max_upload_bytes,
            settings: RwLock::new(Settings {
                access_token: config.access_token.clone().filter(|t| !t.is_empty()),
                env_vars: BTreeMap::new(),
                default_user: config.default_user.clone(),
                default_workdir: config.default_workdir.clone(),
            }),
            user_db: UserDb::new(config.passwd.clone(), config.group.clone()),
            processes: Arc::new(ProcessTable::new(reaper)),
            watchers: Watchers::default(),
            kernels_settled: tokio::sync::watch::Sender::new(false),
        }))
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        let mut guard = self
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// `raw` resolved for `user` ([`resolve`]), an empty path being `/init`'s default
    /// workdir.
    pub fn resolve_path(&self, raw: &str, user: &User) -> Result<PathBuf, Error> {
        let settings = self
            .settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        resolve(raw, &user.home, settings.default_workdir.as_deref())
    }

    /// The request's user (`None` or empty = the default user), with the account files
    /// as read for this request.
    pub fn user(&self, name: Option<&str>) -> Result<(User, Arc<Users>), Error> {
        let users = self.user_db.load();
        let user = match name.filter(|n| !n.is_empty()) {
            Some(n) => users.lookup(n)?,
            None => users.lookup(&self.settings().default_user)?,
        };
        Ok((user, users))
    }
}
