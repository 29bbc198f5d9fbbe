//! silo's catalog: what sandboxes exist, in which state, and who may call the API.
//!
//! One SQLite file (WAL mode) in the data dir. Every state change is one transaction that
//! checks the transition ([`state`]), updates the sandbox row and appends to its history,
//! so a crash leaves either the old state or the new one, never a mix. After a restart,
//! `silo serve` reconciles these rows with what the runtime reports.
//!
//! Types: [`Catalog`] (the handle), [`SandboxRecord`] (one row), [`ListFilter`] (paging).

mod builds;
mod logs;
mod metrics;
mod snapshots;
pub mod state;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::Value;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use silo_protocol::ids::{same_secret, ApiKey, SandboxId};

pub use builds::{BuildLogEntry, BuildRecord, BuildStatus, TagRecord, DEFAULT_TAG};
pub use logs::{LogLine, LogQuery};
pub use metrics::MetricSample;
pub use snapshots::SnapshotRecord;
pub use state::{InvalidTransition, SandboxState};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot open catalog {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot make catalog {path} private to its owner")]
    Private {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("sandbox {0} is not in the catalog")]
    NotFound(SandboxId),
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("sandbox {id} is {actual}, not {expected}")]
    StateChanged {
        id: SandboxId,
        expected: SandboxState,
        actual: SandboxState,
    },
    #[error("catalog row for {id} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
}

pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// One sandbox as the catalog knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    pub id: SandboxId,
    pub template_id: String,
    pub state: SandboxState,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// Unix milliseconds at which the sandbox is killed (or paused) unless extended.
    pub end_at_ms: i64,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    pub envd_access_token: Option<String>,
    pub envd_version: String,
    pub cpu_count: u32,
    pub memory_mb: u32,
    pub disk_size_mb: u32,
    /// Where the sandbox's agent listens on the host (an IP), once it runs.
    pub address: Option<String>,
    /// At its end time the sandbox is paused rather than killed.
    pub auto_pause: bool,
    /// Traffic through the proxy to the paused sandbox resumes it.
    pub auto_resume: bool,
    /// Its egress rules, as last applied.
    pub network: NetworkRules,
    /// Set when its ports are not public (`allowPublicTraffic=false`): the proxy then wants
    /// it as `E2B-Traffic-Access-Token` on every port but envd's.
    pub traffic_access_token: Option<String>,
    /// The root filesystem it was booted on (a template build's, or a snapshot's); a
    /// snapshot of it must be restored on the same one, even once the template is rebuilt.
    /// Unknown (`None`) for sandboxes created before silo recorded it.
    pub rootfs: Option<String>,
}

impl SandboxRecord {
    /// The sandbox's address, while it holds one (a sandbox saved to disk does not).
    pub fn ip(&self) -> Option<std::net::Ipv4Addr> {
        self.address.as_deref().and_then(|a| a.parse().ok())
    }
}

/// A sandbox's egress rules, already validated by the caller: CIDR blocks, host names
/// allowed, and the resolvers named with them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetworkRules {
    pub internet: bool,
    #[serde(default)]
    pub allow_out: Vec<String>,
    #[serde(default)]
    pub deny_out: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_servers: Option<Vec<String>>,
}

impl Default for NetworkRules {
    fn default() -> Self {
        NetworkRules {
            internet: true,
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            allow_domains: Vec::new(),
            dns_servers: None,
        }
    }
}

/// One entry of a sandbox's history.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxEvent {
    pub at_ms: i64,
    pub from: Option<SandboxState>,
    pub to: SandboxState,
    pub detail: String,
}

/// The live states a user sees: running and paused, and on the way between them.
const LISTED_BY_DEFAULT: [SandboxState; 4] = [
    SandboxState::Running,
    SandboxState::Resuming,
    SandboxState::Paused,
    SandboxState::Pausing,
];

/// Which sandboxes to list, and where a page starts.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Empty means [`LISTED_BY_DEFAULT`].
    pub states: Vec<SandboxState>,
    /// Every pair must match.
    pub metadata: BTreeMap<String, String>,
    /// A template's name matches the sandboxes asked for by it and by any of its tags
    /// (`name:tag`); `name:tag`, those of that tag.
    pub template_id: Option<String>,
    /// Only sandboxes started at or after this time (Unix ms).
    pub started_after_ms: Option<i64>,
    /// By start time; newest first unless [`Order::Ascending`].
    pub order: Order,
    /// Where the previous page ended.
    pub after: Option<Cursor>,
    /// `None`: every sandbox that matches.
    pub limit: Option<usize>,
}

/// The order of a list, by start time (then id, so that pages never overlap).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    Ascending,
    #[default]
    Descending,
}

impl Order {
    fn sql(self) -> (&'static str, &'static str) {
        match self {
            Order::Ascending => (">", "ASC"),
            Order::Descending => ("<", "DESC"),
        }
    }
}

/// A page of sandboxes and the token for the next one, if any.
#[derive(Debug)]
pub struct Page {
    pub sandboxes: Vec<SandboxRecord>,
    pub next_token: Option<Cursor>,
}

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    key         TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE sandboxes (
    id            TEXT PRIMARY KEY,
    template_id   TEXT NOT NULL,
    state         TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    end_at        INTEGER NOT NULL,
    metadata      TEXT NOT NULL,
    env_vars      TEXT NOT NULL,
    access_token  TEXT,
    envd_version  TEXT NOT NULL,
    cpu_count     INTEGER NOT NULL,
    memory_mb     INTEGER NOT NULL,
    disk_size_mb  INTEGER NOT NULL,
    address       TEXT
);
CREATE INDEX sandboxes_state ON sandboxes(state, end_at);
CREATE TABLE sandbox_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    sandbox_id  TEXT NOT NULL,
    at          INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX sandbox_events_sandbox ON sandbox_events(sandbox_id, seq);
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN auto_pause INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sandboxes ADD COLUMN auto_resume INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT '{"internet":true}';
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT;
"#,
    r#"
CREATE TABLE snapshots (
    id            TEXT PRIMARY KEY,
    name          TEXT UNIQUE,
    sandbox_id    TEXT NOT NULL,
    template_id   TEXT NOT NULL,
    rootfs        TEXT NOT NULL,
    cpu_count     INTEGER NOT NULL,
    memory_mb     INTEGER NOT NULL,
    disk_size_mb  INTEGER NOT NULL,
    env_vars      TEXT NOT NULL,
    access_token  TEXT,
    created_at    INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE template_builds (
    id           TEXT PRIMARY KEY,
    template     TEXT NOT NULL,
    status       TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    reason       TEXT,
    step         TEXT
);
CREATE INDEX template_builds_template ON template_builds(template, created_at);
CREATE TABLE template_build_logs (
    build_id  TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    level     TEXT NOT NULL,
    message   TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);
CREATE TABLE template_aliases (
    alias     TEXT PRIMARY KEY,
    template  TEXT NOT NULL
);
"#,
    r#"
CREATE TABLE sandbox_metrics (
    sandbox_id    TEXT NOT NULL,
    at            INTEGER NOT NULL,
    cpu_count     INTEGER NOT NULL,
    cpu_used_pct  REAL NOT NULL,
    mem_used      INTEGER NOT NULL,
    mem_total     INTEGER NOT NULL,
    mem_cache     INTEGER NOT NULL,
    disk_used     INTEGER NOT NULL,
    disk_total    INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, at)
);
CREATE TABLE sandbox_logs (
    sandbox_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    pid         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    text        TEXT NOT NULL,
    exit_code   INTEGER,
    PRIMARY KEY (sandbox_id, seq)
);
CREATE INDEX sandbox_logs_at ON sandbox_logs(sandbox_id, at);
"#,
    r#"
ALTER TABLE sandboxes ADD COLUMN rootfs TEXT;
"#,
    // Lists walk it newest first, state by state (`Catalog::list`).
    r#"
CREATE INDEX sandboxes_listed ON sandboxes(state, started_at, id);
"#,
    // A ready build's recipe hash names its directory (`<templates>/<name>/<hash>`); a tag
    // names one build of its template (`Catalog::tagged_build`).
    r#"
ALTER TABLE template_builds ADD COLUMN hash TEXT;
CREATE TABLE template_tags (
    template    TEXT NOT NULL,
    tag         TEXT NOT NULL,
    build_id    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (template, tag)
);
"#,
];

/// A place in a list ordered newest first: the time of an item (a sandbox's start, a
/// snapshot's creation) and its id, compared as such. A page starts after the cursor
/// itself, not after an item found by id, so it starts in the right place when the
/// previous page's last item has gone since (killed, or no longer matching). Its text,
/// `{ms}_{id}`, is the `X-Next-Token` clients pass back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub at_ms: i64,
    pub id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.at_ms, self.id)
    }
}

/// A token this server did not give.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a page token of this server: pass the X-Next-Token of the previous page")]
pub struct BadToken(String);

impl std::str::FromStr for Cursor {
    type Err = BadToken;

    fn from_str(token: &str) -> Result<Cursor, BadToken> {
        let bad = || BadToken(token.to_owned());
        let (at_ms, id) = token.split_once('_').ok_or_else(bad)?;
        let id_chars = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if id.is_empty() || !id.chars().all(id_chars) {
            return Err(bad());
        }
        Ok(Cursor {
            at_ms: at_ms.parse().map_err(|_| bad())?,
            id: id.to_owned(),
        })
    }
}

/// One page of `items` (ordered newest first, by `cursor` descending): those after
/// `after`, at most `limit` of them, and the cursor of the next page (the last item's)
/// when more follow.
pub fn page<T>(
    items: impl Iterator<Item = T>,
    after: Option<&Cursor>,
    limit: Option<usize>,
    cursor: impl Fn(&T) -> Cursor,
) -> (Vec<T>, Option<Cursor>) {
    let mut items = items
        .filter(|item| after.is_none_or(|after| cursor(item) < *after))
        .peekable();
    let limit = limit.unwrap_or(usize::MAX);
    let taken: Vec<T> = items.by_ref().take(limit).collect();
    let next = if taken.len() == limit && items.peek().is_some() {
        taken.last().map(&cursor)
    } else {
        None
    };
    (taken, next)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The catalog holds API keys and every sandbox's tokens: its file, made if missing, and
/// the WAL files beside it are for their owner only. SQLite gives the WAL files it makes
/// the database file's mode.
fn keep_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    Ok(())
}

/// The handle to the catalog. Cheap calls: SQLite on local disk answers in microseconds,
/// so callers use it directly rather than through a blocking pool.
pub struct Catalog {
    conn: Mutex<Connection>,
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Switch the file to WAL. That takes an exclusive lock, and while another process opens
/// the same new file SQLite answers BUSY at once, without waiting (a lock upgrade that
/// waited could deadlock): so wait here, up to [`BUSY_TIMEOUT`].
fn use_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(err, _))
                if err.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog> {
        keep_private(path).map_err(|source| CatalogError::Private {
            path: path.display().to_string(),
            source,
        })?;
        let conn = Connection::open(path).map_err(|source| CatalogError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        use_wal(&conn)?;
        // NORMAL in WAL mode is durable against a process crash (the case that matters for
        // a single-host server) and much cheaper than FULL.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::migrate(conn)
    }

    pub fn open_in_memory() -> Result<Catalog> {
        Self::migrate(Connection::open_in_memory()?)
    }

    fn migrate(mut conn: Connection) -> Result<Catalog> {
        // Every transaction here writes. A deferred one reads under a snapshot, and once
        // another connection (`silo keys create`, a second process) commits, SQLite
        // refuses it the write lock at once (SQLITE_BUSY, busy_timeout does not apply);
        // an immediate one takes the lock at BEGIN, where busy_timeout waits.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        let tx = conn.transaction()?;
        // Read under the write lock: two processes opening one file together must not
        // both run a migration.
        let version: usize = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index + 1)?;
        }
        tx.commit()?;
        Ok(Catalog {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every write is a
        // transaction), so a poisoned lock is safe to keep using.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The API keys, creating the first one if there is none.
    pub fn ensure_api_key(&self) -> Result<Vec<ApiKey>> {
        let keys = self.api_keys()?;
        if !keys.is_empty() {
            return Ok(keys);
        }
        Ok(vec![self.create_api_key()?])
    }

    /// A new API key, valid at once (servers read keys from the catalog per request).
    pub fn create_api_key(&self) -> Result<ApiKey> {
        let key = ApiKey::generate();
        self.conn().execute(
            "INSERT INTO api_keys (key, created_at) VALUES (?1, ?2)",
            params![key.expose(), now_ms()],
        )?;
        Ok(key)
    }

    /// Revoke a key; `false` if there was no such key. Requests with it fail at once.
    pub fn revoke_api_key(&self, key: &str) -> Result<bool> {
        let removed = self
            .conn()
            .execute("DELETE FROM api_keys WHERE key = ?1", [key])?;
        Ok(removed > 0)
    }

    /// Every key with its creation time (Unix ms), oldest first.
    pub fn api_keys_created(&self) -> Result<Vec<(ApiKey, i64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key, created_at FROM api_keys ORDER BY created_at")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?
            .filter_map(|row| {
                let (key, at) = row.ok()?;
                Some((key.parse().ok()?, at))
            })
            .collect();
        Ok(rows)
    }

    pub fn api_keys(&self) -> Result<Vec<ApiKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT key FROM api_keys ORDER BY created_at")?;
        let keys = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .filter_map(|key| key.ok().and_then(|key| key.parse().ok()))
            .collect();
        Ok(keys)
    }

    pub fn is_valid_api_key(&self, key: &str) -> Result<bool> {
        // Each key compared in constant time, not looked up by index: how long a lookup
        // takes must not tell a caller how much of a key it guessed. Servers hold a few keys.
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT key FROM api_keys")?;
        let mut rows = stmt.query([])?;
        let mut valid = false;
        while let Some(row) = rows.next()? {
            let known: String = row.get(0)?;
            valid |= same_secret(known.as_bytes(), key.as_bytes());
        }
        Ok(valid)
    }

    /// Record a new sandbox in `Creating`.
    pub fn insert_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO sandboxes (id, template_id, state, started_at, end_at, metadata, env_vars,
                access_token, envd_version, cpu_count, memory_mb, disk_size_mb, address,
                auto_pause, auto_resume, network, traffic_token, rootfs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18)",
            params![
                rec.id.as_str(),
                rec.template_id,
                rec.state.as_str(),
                rec.started_at_ms,
                rec.end_at_ms,
                serde_json::to_string(&rec.metadata).expect("string map serializes"),
                serde_json::to_string(&rec.env_vars).expect("string map serializes"),
                rec.envd_access_token,
                rec.envd_version,
                rec.cpu_count,
                rec.memory_mb,
                rec.disk_size_mb,
                rec.address,
                rec.auto_pause,
                rec.auto_resume,
                serde_json::to_string(&rec.network).expect("rules serialize"),
                rec.traffic_access_token,
                rec.rootfs,
            ],
        )?;
        insert_event(&tx, &rec.id, None, rec.state, "created")?;
        tx.commit()?;
        Ok(())
    }

    /// Hand a pooled sandbox to a user: its row takes `rec`'s user-facing fields (times,
    /// metadata, env vars, tokens, pause flags, network rules) and goes `Running`, if it
    /// is still `Pooled`.
    pub fn hand_out(&self, rec: &SandboxRecord) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let actual = read_state(&tx, &rec.id)?;
        SandboxState::Pooled.check_transition(SandboxState::Running)?;
        if actual != SandboxState::Pooled {
            return Err(CatalogError::StateChanged {
                id: rec.id.clone(),
                expected: SandboxState::Pooled,
                actual,
            });
        }
        tx.execute(
            "UPDATE sandboxes SET state = ?2, template_id = ?3, started_at = ?4, end_at = ?5,
                metadata = ?6, env_vars = ?7, access_token = ?8, auto_pause = ?9,
                auto_resume = ?10, network = ?11, traffic_token = ?12
             WHERE id = ?1",
            params![
                rec.id.as_str(),
                SandboxState::Running.as_str(),
                rec.template_id,
                rec.started_at_ms,
                rec.end_at_ms,
                serde_json::to_string(&rec.metadata).expect("string map serializes"),
                serde_json::to_string(&rec.env_vars).expect("string map serializes"),
                rec.envd_access_token,
                rec.auto_pause,
                rec.auto_resume,
                serde_json::to_string(&rec.network).expect("rules serialize"),
                rec.traffic_access_token,
            ],
        )?;
        insert_event(
            &tx,
            &rec.id,
            Some(SandboxState::Pooled),
            SandboxState::Running,
            "handed out from the warm pool",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Move a sandbox from `from` to `to`, if it is still in `from` and the step is legal.
    pub fn transition(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        detail: &str,
    ) -> Result<()> {
        self.transition_when(id, from, to, detail, None).map(|_| ())
    }

    /// [`Catalog::transition`], only if the sandbox's end time is still at or before
    /// `now_ms`; `false`, and nothing changed, when it was moved later. A pause at timeout
    /// and a `set_timeout` landing as it begins: one of the two wins, whole.
    pub fn transition_if_expired(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        now_ms: i64,
        detail: &str,
    ) -> Result<bool> {
        self.transition_when(id, from, to, detail, Some(now_ms))
    }

    fn transition_when(
        &self,
        id: &SandboxId,
        from: SandboxState,
        to: SandboxState,
        detail: &str,
        expired_at: Option<i64>,
    ) -> Result<bool> {
        from.check_transition(to)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let actual = read_state(&tx, id)?;
        if actual != from {
            return Err(CatalogError::StateChanged {
                id: id.clone(),
                expected: from,
                actual,
            });
        }
        if let Some(now_ms) = expired_at {
            let end_at: i64 = tx.query_row(
                "SELECT end_at FROM sandboxes WHERE id = ?1",
                [id.as_str()],
                |row| row.get(0),
            )?;
            if end_at > now_ms {
                return Ok(false);
            }
        }
        tx.execute(
            "UPDATE sandboxes SET state = ?2 WHERE id = ?1",
            params![id.as_str(), to.as_str()],
        )?;
        insert_event(&tx, id, Some(from), to, detail)?;
        tx.commit()?;
        Ok(true)
    }

    /// Add something that happened to a sandbox without changing its state (an OOM
    /// kill inside it) to its history.
    pub fn note(&self, id: &SandboxId, detail: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let state = read_state(&tx, id)?;
        insert_event(&tx, id, Some(state), state, detail)?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_address(&self, id: &SandboxId, address: Option<&str>) -> Result<()> {
        self.update_sandbox(
            id,
            "UPDATE sandboxes SET address = ?2 WHERE id = ?1",
            address,
        )
    }

    pub fn set_network(&self, id: &SandboxId, rules: &NetworkRules) -> Result<()> {
        self.update_sandbox(
            id,
            "UPDATE sandboxes SET network = ?2 WHERE id = ?1",
            serde_json::to_string(rules).expect("rules serialize"),
        )
    }

    /// Set the end time of a sandbox in one of `states`, checked in the same statement
    /// (a state change cannot land between); `false` when it is in another state.
    pub fn set_end_at_in(
        &self,
        id: &SandboxId,
        end_at_ms: i64,
        states: &[SandboxState],
    ) -> Result<bool> {
        let conn = self.conn();
        let placeholders = (3..states.len() + 3)
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let id_text = id.as_str();
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&id_text, &end_at_ms];
        let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        values.extend(names.iter().map(|n| n as &dyn rusqlite::ToSql));
        let changed = conn.execute(
            &format!(
                "UPDATE sandboxes SET end_at = ?2 WHERE id = ?1 AND state IN ({placeholders})"
            ),
            values.as_slice(),
        )?;
        if changed == 0 {
            // No such row is NotFound.
            read_state(&conn, id)?;
        }
        Ok(changed > 0)
    }

    pub fn set_end_at(&self, id: &SandboxId, end_at_ms: i64) -> Result<()> {
        self.update_sandbox(
            id,
            "UPDATE sandboxes SET end_at = ?2 WHERE id = ?1",
            end_at_ms,
        )
    }

    /// Run `sql` (`?1` = the id, `?2` = `value`) on one sandbox's row; no row is NotFound.
    fn update_sandbox(&self, id: &SandboxId, sql: &str, value: impl rusqlite::ToSql) -> Result<()> {
        let changed = self.conn().execute(sql, params![id.as_str(), value])?;
        if changed == 0 {
            return Err(CatalogError::NotFound(id.clone()));
        }
        Ok(())
    }

    pub fn get_sandbox(&self, id: &SandboxId) -> Result<Option<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("{SELECT_SANDBOX} WHERE id = ?1"))?;
        let row = stmt.query_row([id.as_str()], raw_row).optional()?;
        row.map(RawRow::into_record).transpose()
    }

    /// Sandboxes in any of `states`, oldest first.
    pub fn sandboxes_in(&self, states: &[SandboxState]) -> Result<Vec<SandboxRecord>> {
        let placeholders = (1..=states.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        self.records(
            &format!("{SELECT_SANDBOX} WHERE state IN ({placeholders}) ORDER BY started_at, id"),
            rusqlite::params_from_iter(states.iter().map(|s| s.as_str())),
        )
    }

    /// Running sandboxes whose end time has passed.
    pub fn expired(&self, now_ms: i64) -> Result<Vec<SandboxRecord>> {
        self.records(
            &format!("{SELECT_SANDBOX} WHERE state = 'running' AND end_at <= ?1 ORDER BY end_at"),
            [now_ms],
        )
    }

    /// The sandboxes `sql` (a [`SELECT_SANDBOX`] query) selects.
    fn records(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<SandboxRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(sql)?;
        let rows: Vec<RawRow> = stmt
            .query_map(params, raw_row)?
            .collect::<std::result::Result<_, _>>()?;
        rows.into_iter().map(RawRow::into_record).collect()
    }

    /// A page of sandboxes, newest first. Filtered, paged and limited in SQL: one
    /// subquery per state walks `sandboxes_listed` down from the cursor and stops at the
    /// limit (`state IN (...)` would sort every row of those states, the killed history
    /// included, on each call).
    pub fn list(&self, filter: &ListFilter) -> Result<Page> {
        let mut states: Vec<&str> = if filter.states.is_empty() {
            LISTED_BY_DEFAULT.iter().map(|s| s.as_str()).collect()
        } else {
            filter.states.iter().map(|s| s.as_str()).collect()
        };
        // A state named twice would list its sandboxes twice.
        states.sort_unstable();
        states.dedup();
        // One more than the page, to know whether another follows; -1 is no limit.
        let fetch = filter
            .limit
            .map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1);
        let mut values = vec![Value::Integer(fetch)];
        let mut param = |value: Value| {
            values.push(value);
            format!("?{}", values.len())
        };
        let (past, direction) = filter.order.sql();
        let mut conditions = String::new();
        if let Some(after) = &filter.after {
            let (at, id) = (
                param(Value::Integer(after.at_ms)),
                param(Value::Text(after.id.clone())),
            );
            conditions += &format!(" AND (started_at, id) {past} ({at}, {id})");
        }
        if let Some(started_after) = filter.started_after_ms {
            conditions += &format!(
                " AND started_at >= {}",
                param(Value::Integer(started_after))
            );
        }
        if let Some(template) = &filter.template_id {
            let template = param(template.clone().into());
            conditions += &format!(
                " AND (template_id = {template} OR \
                 substr(template_id, 1, length({template}) + 1) = {template} || ':')"
            );
        }
        for (key, value) in &filter.metadata {
            let (key, value) = (param(key.clone().into()), param(value.clone().into()));
            conditions += &format!(
                " AND EXISTS (SELECT 1 FROM json_each(metadata) WHERE key = {key} AND value = {value})"
            );
        }
        let per_state: Vec<String> = states
            .iter()
            .map(|state| {
                let state = param(Value::Text((*state).to_owned()));
                format!(
                    "SELECT * FROM ({SELECT_SANDBOX} WHERE state = {state}{conditions} \
                     ORDER BY started_at {direction}, id {direction} LIMIT ?1)"
                )
            })
            .collect();
        let mut sandboxes = self.records(
            &format!(
                "{} ORDER BY started_at {direction}, id {direction} LIMIT ?1",
                per_state.join(" UNION ALL ")
            ),
            rusqlite::params_from_iter(values),
        )?;
        let next_token = match filter.limit {
            Some(limit) if sandboxes.len() > limit => {
                sandboxes.truncate(limit);
                sandboxes.last().map(|rec| Cursor {
                    at_ms: rec.started_at_ms,
                    id: rec.id.to_string(),
                })
            }
            _ => None,
        };
        Ok(Page {
            sandboxes,
            next_token,
        })
    }

    /// Forget the sandboxes killed before `before_ms` (by the time of their last state
    /// change), with their history, metrics and logs. Returns how many went.
    pub fn prune_killed(&self, before_ms: i64) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "CREATE TEMP TABLE IF NOT EXISTS pruned (id TEXT PRIMARY KEY)",
            [],
        )?;
        tx.execute("DELETE FROM pruned", [])?;
        let pruned = tx.execute(
            "INSERT INTO pruned SELECT s.id FROM sandboxes s WHERE s.state = 'killed' AND \
             (SELECT MAX(at) FROM sandbox_events e WHERE e.sandbox_id = s.id) < ?1",
            [before_ms],
        )?;
        for table in ["sandbox_metrics", "sandbox_logs", "sandbox_events"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE sandbox_id IN (SELECT id FROM pruned)"),
                [],
            )?;
        }
        tx.execute(
            "DELETE FROM sandboxes WHERE id IN (SELECT id FROM pruned)",
            [],
        )?;
        tx.commit()?;
        Ok(pruned)
    }

    /// How many sandboxes are in each state, per template (killed ones included).
    pub fn count_sandboxes(&self) -> Result<Vec<(SandboxState, String, u64)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT state, template_id, COUNT(*) FROM sandboxes GROUP BY state, template_id",
        )?;
        let rows: Vec<(String, String, i64)> = stmt
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
            .collect::<std::result::Result<_, _>>()?;
        rows.into_iter()
            .map(|(state, template, count)| {
                let state = state.parse().map_err(|reason| CatalogError::Corrupt {
                    id: format!("(sandboxes of {template})"),
                    reason,
                })?;
                Ok((state, template, count.max(0) as u64))
            })
            .collect()
    }

    pub fn events(&self, id: &SandboxId) -> Result<Vec<SandboxEvent>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT at, from_state, to_state, detail FROM sandbox_events
             WHERE sandbox_id = ?1 ORDER BY seq",
        )?;
        let rows: Vec<(i64, Option<String>, String, String)> = stmt
            .query_map([id.as_str()], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })?
            .collect::<std::result::Result<_, _>>()?;
        rows.into_iter()
            .map(|(at_ms, from, to, detail)| {
                let corrupt = |reason| CatalogError::Corrupt {
                    id: id.to_string(),
                    reason,
                };
                Ok(SandboxEvent {
                    at_ms,
                    from: from.map(|s| s.parse()).transpose().map_err(corrupt)?,
                    to: to.parse().map_err(corrupt)?,
                    detail,
                })
            })
            .collect()
    }
}

const SELECT_SANDBOX: &str =
    "SELECT id, template_id, state, started_at, end_at, metadata, env_vars,
    access_token, envd_version, cpu_count, memory_mb, disk_size_mb, address,
    auto_pause, auto_resume, network, traffic_token, rootfs FROM sandboxes";

/// A row as stored, before its text columns are parsed.
struct RawRow {
    id: String,
    template_id: String,
    state: String,
    started_at_ms: i64,
    end_at_ms: i64,
    metadata: String,
    env_vars: String,
    envd_access_token: Option<String>,
    envd_version: String,
    cpu_count: u32,
    memory_mb: u32,
    disk_size_mb: u32,
    address: Option<String>,
    auto_pause: bool,
    auto_resume: bool,
    network: String,
    traffic_access_token: Option<String>,
    rootfs: Option<String>,
}

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: row.get(0)?,
        template_id: row.get(1)?,
        state: row.get(2)?,
        started_at_ms: row.get(3)?,
        end_at_ms: row.get(4)?,
        metadata: row.get(5)?,
        env_vars: row.get(6)?,
        envd_access_token: row.get(7)?,
        envd_version: row.get(8)?,
        cpu_count: row.get(9)?,
        memory_mb: row.get(10)?,
        disk_size_mb: row.get(11)?,
        address: row.get(12)?,
        auto_pause: row.get(13)?,
        auto_resume: row.get(14)?,
        network: row.get(15)?,
        traffic_access_token: row.get(16)?,
        rootfs: row.get(17)?,
    })
}

impl RawRow {
    fn into_record(self) -> Result<SandboxRecord> {
        let corrupt = |reason: String| CatalogError::Corrupt {
            id: self.id.clone(),
            reason,
        };
        Ok(SandboxRecord {
            id: self.id.parse().map_err(|e| corrupt(format!("{e}")))?,
            state: self.state.parse().map_err(corrupt)?,
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|e| corrupt(format!("metadata: {e}")))?,
            env_vars: serde_json::from_str(&self.env_vars)
                .map_err(|e| corrupt(format!("env vars: {e}")))?,
            template_id: self.template_id,
            started_at_ms: self.started_at_ms,
            end_at_ms: self.end_at_ms,
            envd_access_token: self.envd_access_token,
            envd_version: self.envd_version,
            cpu_count: self.cpu_count,
            memory_mb: self.memory_mb,
            disk_size_mb: self.disk_size_mb,
            address: self.address,
            auto_pause: self.auto_pause,
            auto_resume: self.auto_resume,
            traffic_access_token: self.traffic_access_token,
            rootfs: self.rootfs,
            network: serde_json::from_str(&self.network)
                .map_err(|e| corrupt(format!("network: {e}")))?,
        })
    }
}

fn read_state(conn: &Connection, id: &SandboxId) -> Result<SandboxState> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM sandboxes WHERE id = ?1",
            [id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    let state = state.ok_or_else(|| CatalogError::NotFound(id.clone()))?;
    state.parse().map_err(|reason| CatalogError::Corrupt {
        id: id.to_string(),
        reason,
    })
}

fn insert_event(
    conn: &Connection,
    id: &SandboxId,
    from: Option<SandboxState>,
    to: SandboxState,
    detail: &str,
) -> Result<()> {
    conn.execute(
        "INSERT INTO sandbox_events (sandbox_id, at, from_state, to_state, detail)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.as_str(),
            now_ms(),
            from.map(SandboxState::as_str),
            to.as_str(),
            detail
        ],
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_token() {
        // Newest first; two items share a millisecond.
        let items = [(50, "e"), (40, "d"), (30, "c"), (30, "b"), (10, "a")];
        let at = |(at_ms, id): (i64, &str)| Cursor {
            at_ms,
            id: id.into(),
        };
        let pages = |after: Option<Cursor>, limit| {
            page(items.iter().copied(), after.as_ref(), limit, |&item| {
                at(item)
            })
        };
        assert_eq!(
            pages(None, Some(2)),
            (vec![(50, "e"), (40, "d")], Some(at((40, "d"))))
        );
        assert_eq!(
            pages(Some(at((40, "d"))), Some(2)),
            (vec![(30, "c"), (30, "b")], Some(at((30, "b"))))
        );
        assert_eq!(pages(Some(at((30, "b"))), Some(2)), (vec![(10, "a")], None));
        assert_eq!(
            pages(Some(at((40, "d"))), Some(3)),
            (vec![(30, "c"), (30, "b"), (10, "a")], None),
            "no empty last page"
        );
        assert_eq!(pages(None, None).0.len(), 5);
        // The previous page's last item gone: the next page still starts after it.
        let without_d = || items.iter().copied().filter(|&(_, id)| id != "d");
        assert_eq!(
            page(without_d(), Some(&at((40, "d"))), Some(2), |&item| at(item)).0,
            vec![(30, "c"), (30, "b")]
        );
    }

    #[test]
    fn tokens_are_cursors_in_text() {
        let cursor = Cursor {
            at_ms: 1_765_000_000_123,
            id: "iabc123".into(),
        };
        assert_eq!(cursor.to_string().parse::<Cursor>().unwrap(), cursor);
        for bad in ["", "iabc123", "x_iabc", "12_", "12_a b", "12_../x"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    pub(crate) fn record(template: &str, metadata: &[(&str, &str)]) -> SandboxRecord {
        SandboxRecord {
            id: SandboxId::generate(),
            template_id: template.into(),
            state: SandboxState::Creating,
            started_at_ms: now_ms(),
            end_at_ms: now_ms() + 300_000,
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            env_vars: BTreeMap::new(),
            envd_access_token: Some("tok".into()),
            envd_version: "0.6.13".into(),
            cpu_count: 2,
            memory_mb: 512,
            disk_size_mb: 1024,
            address: None,
            auto_pause: false,
            auto_resume: false,
            network: NetworkRules::default(),
            traffic_access_token: None,
            rootfs: Some("/t/base/abc/rootfs".into()),
        }
    }

    pub(crate) fn running(catalog: &Catalog, rec: &SandboxRecord) {
        catalog.insert_sandbox(rec).unwrap();
        catalog
            .transition(&rec.id, SandboxState::Creating, SandboxState::Running, "up")
            .unwrap();
    }

    #[test]
    fn a_pooled_sandbox_is_handed_out_once_with_its_users_settings() {
        let catalog = Catalog::open_in_memory().unwrap();
        let mut rec = record("base", &[]);
        catalog.insert_sandbox(&rec).unwrap();
        catalog
            .transition(&rec.id, SandboxState::Creating, SandboxState::Pooled, "up")
            .unwrap();
        let listed = catalog.list(&ListFilter::default()).unwrap();
        assert!(
            listed.sandboxes.is_empty(),
            "pooled sandboxes are not listed"
        );
        rec.metadata = BTreeMap::from([("who".into(), "me".into())]);
        rec.envd_access_token = Some("mine".into());
        rec.auto_pause = true;
        catalog.hand_out(&rec).unwrap();
        let got = catalog.get_sandbox(&rec.id).unwrap().unwrap();
        assert_eq!(got.state, SandboxState::Running);
        assert_eq!(got.metadata, rec.metadata);
        assert_eq!(got.envd_access_token.as_deref(), Some("mine"));
        assert!(got.auto_pause);
        assert!(matches!(
            catalog.hand_out(&rec),
            Err(CatalogError::StateChanged { .. })
        ));
    }

    #[test]
    fn keys_are_created_and_revoked() {
        let catalog = Catalog::open_in_memory().unwrap();
        let first = catalog.ensure_api_key().unwrap().remove(0);
        let second = catalog.create_api_key().unwrap();
        assert!(catalog.is_valid_api_key(second.expose()).unwrap());
        assert_eq!(catalog.api_keys_created().unwrap().len(), 2);
        assert!(catalog.revoke_api_key(second.expose()).unwrap());
        assert!(!catalog.revoke_api_key(second.expose()).unwrap());
        assert!(!catalog.is_valid_api_key(second.expose()).unwrap());
        assert!(catalog.is_valid_api_key(first.expose()).unwrap());
    }

    #[test]
    fn first_key_is_generated_once_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let first = Catalog::open(&path).unwrap().ensure_api_key().unwrap();
        let again = Catalog::open(&path).unwrap().ensure_api_key().unwrap();
        assert_eq!(first, again);
        let catalog = Catalog::open(&path).unwrap();
        assert!(catalog.is_valid_api_key(first[0].expose()).unwrap());
        assert!(!catalog.is_valid_api_key("e2b_wrong").unwrap());
    }

    #[test]
    fn the_catalog_files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        // One made before this rule, readable by all.
        Catalog::open(&path).unwrap().ensure_api_key().unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let catalog = Catalog::open(&path).unwrap();
        catalog.ensure_api_key().unwrap();
        for name in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn a_timeout_and_a_new_end_time_never_both_win() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        let live = [SandboxState::Running, SandboxState::Paused];
        // The end time moved past `now`: the timeout's step does not happen.
        let now = rec.end_at_ms - 1;
        assert!(!catalog
            .transition_if_expired(
                &rec.id,
                SandboxState::Running,
                SandboxState::Pausing,
                now,
                "t"
            )
            .unwrap());
        assert_eq!(
            catalog.get_sandbox(&rec.id).unwrap().unwrap().state,
            SandboxState::Running
        );
        // Expired: it happens, and a new end time then finds it pausing.
        let now = rec.end_at_ms;
        assert!(catalog
            .transition_if_expired(
                &rec.id,
                SandboxState::Running,
                SandboxState::Pausing,
                now,
                "t"
            )
            .unwrap());
        assert!(!catalog.set_end_at_in(&rec.id, now + 60_000, &live).unwrap());
        assert_eq!(
            catalog.get_sandbox(&rec.id).unwrap().unwrap().end_at_ms,
            rec.end_at_ms
        );
        catalog
            .transition(&rec.id, SandboxState::Pausing, SandboxState::Paused, "t")
            .unwrap();
        assert!(catalog.set_end_at_in(&rec.id, now + 60_000, &live).unwrap());
        assert!(matches!(
            catalog.set_end_at_in(&SandboxId::generate(), now, &live),
            Err(CatalogError::NotFound(_))
        ));
    }

    #[test]
    fn transitions_are_checked_and_recorded() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        let err = catalog
            .transition(&rec.id, SandboxState::Running, SandboxState::Killed, "x")
            .unwrap_err();
        assert!(matches!(err, CatalogError::Transition(_)));
        let err = catalog
            .transition(&rec.id, SandboxState::Creating, SandboxState::Running, "x")
            .unwrap_err();
        assert!(matches!(err, CatalogError::StateChanged { .. }));
        let events = catalog.events(&rec.id).unwrap();
        assert_eq!(
            events.iter().map(|e| e.to).collect::<Vec<_>>(),
            vec![SandboxState::Creating, SandboxState::Running]
        );
        assert_eq!(
            catalog.get_sandbox(&rec.id).unwrap().unwrap().state,
            SandboxState::Running
        );
    }

    #[test]
    fn a_sandbox_reads_back_as_written_with_its_rootfs_or_none() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[("k", "v")]);
        catalog.insert_sandbox(&rec).unwrap();
        assert_eq!(catalog.get_sandbox(&rec.id).unwrap().unwrap(), rec);
        // A row from before the column (migrated) has no rootfs.
        let old = SandboxRecord {
            rootfs: None,
            ..record("base", &[])
        };
        catalog.insert_sandbox(&old).unwrap();
        assert_eq!(catalog.get_sandbox(&old.id).unwrap().unwrap().rootfs, None);
    }

    #[test]
    fn unknown_sandbox_is_not_found() {
        let catalog = Catalog::open_in_memory().unwrap();
        let id = SandboxId::generate();
        assert!(catalog.get_sandbox(&id).unwrap().is_none());
        assert!(matches!(
            catalog.set_end_at(&id, 0),
            Err(CatalogError::NotFound(_))
        ));
    }

    #[test]
    fn list_filters_and_pages() {
        let catalog = Catalog::open_in_memory().unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            let mut rec = record("base", &[("team", if i % 2 == 0 { "a" } else { "b" })]);
            rec.started_at_ms += i;
            running(&catalog, &rec);
            ids.push(rec.id);
        }
        let creating = record("base", &[("team", "a")]);
        catalog.insert_sandbox(&creating).unwrap();

        let team_a = ListFilter {
            metadata: [("team".to_string(), "a".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(catalog.list(&team_a).unwrap().sandboxes.len(), 3);

        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = catalog
                .list(&ListFilter {
                    after: after.clone(),
                    limit: Some(2),
                    ..Default::default()
                })
                .unwrap();
            seen.extend(page.sandboxes.iter().map(|rec| rec.id.clone()));
            match page.next_token {
                Some(token) => after = Some(token),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids, "newest first, each once");
    }

    /// Every page of `filter`, followed by its tokens.
    fn all_pages(catalog: &Catalog, filter: &ListFilter) -> Vec<Vec<SandboxId>> {
        let mut filter = filter.clone();
        let mut pages = Vec::new();
        loop {
            let page = catalog.list(&filter).unwrap();
            pages.push(page.sandboxes.into_iter().map(|rec| rec.id).collect());
            match page.next_token {
                Some(token) => filter.after = Some(token),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_template_filter_lists_its_tags_and_a_tag_filter_only_that_tag() {
        let catalog = Catalog::open_in_memory().unwrap();
        let recs: Vec<SandboxRecord> = ["app", "app:v1", "app:v2", "apple", "app2:v1"]
            .into_iter()
            .map(|template| record(template, &[]))
            .collect();
        for rec in &recs {
            running(&catalog, rec);
        }
        let listed = |template: &str| {
            let filter = ListFilter {
                template_id: Some(template.into()),
                ..Default::default()
            };
            let mut ids = all_pages(&catalog, &filter).concat();
            ids.sort_by_key(|id| id.to_string());
            ids
        };
        let ids = |at: &[usize]| {
            let mut ids: Vec<SandboxId> = at.iter().map(|&i| recs[i].id.clone()).collect();
            ids.sort_by_key(|id| id.to_string());
            ids
        };
        assert_eq!(listed("app"), ids(&[0, 1, 2]));
        assert_eq!(listed("app:v1"), ids(&[1]));
        assert_eq!(listed("app2"), ids(&[4]));
        assert_eq!(listed("ap"), ids(&[]));
    }

    #[test]
    fn list_pages_across_states_templates_and_metadata_in_sql() {
        let catalog = Catalog::open_in_memory().unwrap();
        let start = now_ms();
        // Newest last; two share a millisecond (then the id orders them).
        let mut made = Vec::new();
        for (i, (state, template, team)) in [
            (SandboxState::Running, "base", "a"),
            (SandboxState::Paused, "base", "b"),
            (SandboxState::Running, "web", "a"),
            (SandboxState::Killed, "base", "a"),
            (SandboxState::Paused, "web", "a"),
            (SandboxState::Running, "base", "a"),
            (SandboxState::Running, "base", "a"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut rec = record(template, &[("team", team), ("n", &i.to_string())]);
            rec.started_at_ms = start + (i as i64).min(5);
            running(&catalog, &rec);
            let steps: &[SandboxState] = match state {
                SandboxState::Running => &[],
                SandboxState::Paused => &[SandboxState::Pausing, SandboxState::Paused],
                _ => &[SandboxState::Killing, SandboxState::Killed],
            };
            let mut from = SandboxState::Running;
            for &to in steps {
                catalog.transition(&rec.id, from, to, "t").unwrap();
                from = to;
            }
            made.push(rec);
        }
        let newest_first = |picked: &[usize]| -> Vec<SandboxId> {
            let mut recs: Vec<&SandboxRecord> = picked.iter().map(|&i| &made[i]).collect();
            recs.sort_by_key(|rec| std::cmp::Reverse((rec.started_at_ms, rec.id.to_string())));
            recs.into_iter().map(|rec| rec.id.clone()).collect()
        };
        let live_team_a = ListFilter {
            metadata: [("team".to_string(), "a".to_string())].into(),
            limit: Some(2),
            ..Default::default()
        };
        let pages = all_pages(&catalog, &live_team_a);
        assert_eq!(pages.len(), 3, "2 + 2 + 1, no empty last page");
        assert_eq!(pages.concat(), newest_first(&[0, 2, 4, 5, 6]));
        let base_running = ListFilter {
            states: vec![SandboxState::Running, SandboxState::Running],
            template_id: Some("base".into()),
            limit: Some(10),
            ..Default::default()
        };
        assert_eq!(
            all_pages(&catalog, &base_running).concat(),
            newest_first(&[0, 5, 6]),
            "a state named twice lists each sandbox once"
        );
        let killed_or_paused_web = ListFilter {
            states: vec![SandboxState::Killed, SandboxState::Paused],
            metadata: [("team".into(), "a".into()), ("n".into(), "4".into())].into(),
            ..Default::default()
        };
        assert_eq!(
            all_pages(&catalog, &killed_or_paused_web),
            [newest_first(&[4])]
        );
        let killed = ListFilter {
            states: vec![SandboxState::Killed],
            ..Default::default()
        };
        assert_eq!(all_pages(&catalog, &killed), [newest_first(&[3])]);
        // Oldest first, paged the other way; and from a start time on.
        let oldest_first = ListFilter {
            order: Order::Ascending,
            ..live_team_a.clone()
        };
        let mut ascending = newest_first(&[0, 2, 4, 5, 6]);
        ascending.reverse();
        assert_eq!(all_pages(&catalog, &oldest_first).concat(), ascending);
        let recent = ListFilter {
            started_after_ms: Some(start + 4),
            ..live_team_a.clone()
        };
        assert_eq!(
            all_pages(&catalog, &recent).concat(),
            newest_first(&[4, 5, 6])
        );
        // The next page starts after the cursor, though its sandbox has gone since.
        let first = catalog.list(&live_team_a).unwrap();
        let gone = &first.sandboxes[1];
        catalog
            .transition(&gone.id, SandboxState::Running, SandboxState::Killing, "t")
            .unwrap();
        let rest = all_pages(
            &catalog,
            &ListFilter {
                after: first.next_token,
                ..live_team_a.clone()
            },
        );
        assert_eq!(rest.concat(), newest_first(&[0, 2, 4]));
    }

    /// A catalog file at `path` as the first `version` migrations left it.
    pub(crate) fn catalog_at_version(path: &Path, version: usize) {
        let old = second_connection(path);
        for sql in &MIGRATIONS[..version] {
            old.execute_batch(sql).unwrap();
        }
        old.pragma_update(None, "user_version", version).unwrap();
    }

    #[test]
    fn a_catalog_of_the_previous_version_gains_the_list_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let previous = MIGRATIONS
            .iter()
            .position(|sql| sql.contains("sandboxes_listed"))
            .unwrap();
        catalog_at_version(&path, previous);
        let catalog = Catalog::open(&path).unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        assert_eq!(
            catalog.list(&ListFilter::default()).unwrap().sandboxes,
            [catalog.get_sandbox(&rec.id).unwrap().unwrap()]
        );
        let plan: String = catalog
            .conn()
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM sandboxes WHERE state = 'killed' \
                 ORDER BY started_at DESC, id DESC LIMIT 10",
                [],
                |row| row.get(3),
            )
            .unwrap();
        assert!(plan.contains("sandboxes_listed"), "{plan}");
    }

    /// A second connection to the file, as `silo keys create` opens, waiting for locks
    /// as the catalog's does.
    pub(crate) fn second_connection(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        conn
    }

    #[test]
    fn a_state_change_waits_for_another_process_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let catalog = Catalog::open(&path).unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        let mut other = second_connection(&path);
        let writing = other.transaction().unwrap();
        writing
            .execute("INSERT INTO api_keys (key, created_at) VALUES ('k', 0)", [])
            .unwrap();
        std::thread::scope(|scope| {
            let change = scope.spawn(|| {
                catalog.transition(&rec.id, SandboxState::Running, SandboxState::Pausing, "t")
            });
            // Let the state change start while the other write holds the lock (if it
            // has not by the commit, the test passes without showing anything).
            std::thread::sleep(std::time::Duration::from_millis(200));
            writing.commit().unwrap();
            change.join().unwrap().unwrap();
        });
        assert_eq!(
            catalog.get_sandbox(&rec.id).unwrap().unwrap().state,
            SandboxState::Pausing
        );
    }

    #[test]
    fn processes_creating_a_catalog_file_together_all_open_it() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("catalog.db");
            let start = std::sync::Barrier::new(4);
            std::thread::scope(|scope| {
                let opened: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            start.wait();
                            Catalog::open(&path).map(|_| ())
                        })
                    })
                    .collect();
                for open in opened {
                    open.join().unwrap().unwrap();
                }
            });
        }
    }

    #[test]
    fn processes_opening_a_new_catalog_together_migrate_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        second_connection(&path)
            .pragma_update(None, "journal_mode", "WAL")
            .unwrap();
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            let opened: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let conn = second_connection(&path);
                        start.wait();
                        Catalog::migrate(conn).map(|_| ())
                    })
                })
                .collect();
            for open in opened {
                open.join().unwrap().unwrap();
            }
        });
        let version: usize = second_connection(&path)
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len());
    }

    #[test]
    fn expired_lists_only_running_past_end() {
        let catalog = Catalog::open_in_memory().unwrap();
        let rec = record("base", &[]);
        running(&catalog, &rec);
        assert!(catalog.expired(now_ms()).unwrap().is_empty());
        catalog.set_end_at(&rec.id, now_ms() - 1).unwrap();
        let expired: Vec<_> = catalog
            .expired(now_ms())
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(expired, vec![rec.id]);
    }
}
