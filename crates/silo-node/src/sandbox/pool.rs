//! The warm pool: sandboxes booted from a template ahead of demand (`Pooled` in the
//! catalog, invisible to users), each handed to one create and never reused.
//!
//! - Sizes per template come from `silo serve --pool NAME=SIZE`, and grow with recent
//!   demand: a pool holds as many sandboxes as creates of its template came in the last
//!   [`DEMAND_WINDOW`], from its configured size up to [`DEMAND_FACTOR`] times it.
//!   [`Manager::start_pool`] keeps each pool full in the background, one boot at a time
//!   (each after a pause in creates, at most [`MAX_DEFER`] late),
//!   and stops filling while the host has less than [`MIN_AVAILABLE_MB`] available.
//! - A pooled sandbox belongs to one build of its template: when the template is rebuilt,
//!   the stale ones are killed and replaced.
//! - A hand-out gives the sandbox its user's settings: the agent is configured again
//!   when the create brings env vars or wants no access token (otherwise it keeps the
//!   token it was booted with, random and never shown to anyone, and a hand-out spares
//!   a round trip into the sandbox), egress rules applied, and the catalog row rewritten
//!   (times, metadata, tokens, flags) as it goes `Running`. If any of that fails, the
//!   sandbox is killed and the create boots one cold.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use silo_catalog::{now_ms, SandboxRecord, SandboxState};
use silo_protocol::envd::InitRequest;
use silo_protocol::ids::{generate_access_token, SandboxId};

use futures_util::StreamExt;

use super::create::{CreateRequest, Origin};
use super::{Manager, SandboxError};

/// A pooled sandbox's time to live: until it is handed out.
pub(super) const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Below this much available host memory, pools are not filled.
pub const MIN_AVAILABLE_MB: u64 = 2048;
/// Sandboxes booting for a pool carry this metadata key (replaced at hand-out), so
/// nothing mistakes them for a user's.
pub const POOL_METADATA: &str = "silo.pool";
/// How far back creates count as demand.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(30);
/// A pool grows with demand up to this many times its configured size.
pub const DEMAND_FACTOR: usize = 4;
/// A refill boot waits until no create has come for this long: a boot is ~0.25 s of CPU,
/// which the hand-outs of a burst and a new sandbox's first commands need more ...
const QUIET: Duration = Duration::from_millis(200);
/// ... but not for longer than this, so a steady stream of creates still gets refills.
const MAX_DEFER: Duration = Duration::from_secs(1);
/// A pooled sandbox is frozen (dozes, ADR 0017) this long after it joined the pool, its
/// agent's start-up work (the warm shell) done: an idle gVisor sandbox burns ~2-3 % of a
/// core on systrap, a pool of 50 a whole one. A hand-out thaws it first.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the filler looks again when nothing woke it.
const RECHECK: Duration = Duration::from_secs(2);
/// Pooled sandboxes torn down at once when the server stops.
const DISCARDS_AT_STOP: usize = 8;

/// A sandbox waiting in a pool.
struct Waiting {
    id: SandboxId,
    /// The build it was booted from.
    rootfs: PathBuf,
    /// The agent's token until hand-out.
    token: Option<String>,
    /// When it joined the pool; it is frozen [`SETTLE`] later.
    pooled_at: Instant,
}

/// When creates of one template came, within [`DEMAND_WINDOW`].
#[derive(Default)]
struct Demand(VecDeque<Instant>);

impl Demand {
    fn record(&mut self, at: Instant) {
        self.forget_before(at);
        self.0.push_back(at);
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) > DEMAND_WINDOW)
        {
            self.0.pop_front();
        }
    }

    /// The pool size for a template configured with `configured`.
    fn target(&mut self, configured: usize, now: Instant) -> usize {
        self.forget_before(now);
        self.0.len().clamp(configured, configured * DEMAND_FACTOR)
    }
}

#[derive(Default)]
pub(super) struct Pool {
    /// Configured size per canonical template name.
    sizes: Mutex<BTreeMap<String, usize>>,
    /// Recent creates per template (as creates resolve it).
    demand: Mutex<HashMap<String, Demand>>,
    /// When the newest create came, of any template.
    last_create: Mutex<Option<Instant>>,
    ready: Mutex<HashMap<String, VecDeque<Waiting>>>,
    wake: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl Pool {
    fn ready(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Waiting>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn demand(&self) -> std::sync::MutexGuard<'_, HashMap<String, Demand>> {
        self.demand.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn last_create(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.last_create.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Until no create has come for [`QUIET`], or [`MAX_DEFER`] has passed.
    async fn wait_for_quiet(&self) {
        let deferred_from = Instant::now();
        loop {
            let since = self.last_create().map(|at| at.elapsed());
            match since {
                Some(since) if since < QUIET && deferred_from.elapsed() < MAX_DEFER => {
                    tokio::time::sleep(QUIET - since).await;
                }
                _ => return,
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Manager {
    /// Keep `sizes` (template name or alias → count) sandboxes ready per template.
    pub fn set_pool_sizes(&self, sizes: BTreeMap<String, usize>) -> Result<(), SandboxError> {
        let mut canonical = BTreeMap::new();
        for (name, size) in sizes {
            canonical.insert(self.templates.canonical(&name)?.to_owned(), size);
        }
        *self.pool.sizes.lock().unwrap_or_else(|p| p.into_inner()) = canonical;
        self.pool.wake.notify_one();
        Ok(())
    }

    /// Pooled sandboxes ready now, per template.
    pub fn pooled(&self) -> BTreeMap<String, usize> {
        self.pool
            .ready()
            .iter()
            .map(|(name, queue)| (name.clone(), queue.len()))
            .collect()
    }

    /// Fill the pools in the background until [`Manager::shutdown`], which waits for a
    /// boot in flight (and discards what it booted) rather than leave it half made.
    pub fn start_pool(self: &Arc<Self>) {
        self.tasks.spawn(Arc::clone(self).run_pool());
    }

    async fn run_pool(self: Arc<Self>) {
        while !self.pool.is_closed() {
            let sizes = self
                .pool
                .sizes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.freeze_settled_pooled();
            let mut booted = false;
            for (template, size) in sizes {
                booted |= self.fill_one(&template, size).await;
            }
            if !booted {
                let _ = tokio::time::timeout(RECHECK, self.pool.wake.notified()).await;
            }
        }
    }

    /// Freeze the pooled sandboxes that joined [`SETTLE`] ago (those dozing already are
    /// left as they are). Under the pool's lock: one handed out is no longer in it, and
    /// its hand-out thaws it (`enter`).
    fn freeze_settled_pooled(&self) {
        let ready = self.pool.ready();
        for waiting in ready.values().flatten() {
            if waiting.pooled_at.elapsed() < SETTLE {
                continue;
            }
            if let Err(err) = self.doze_now(&waiting.id) {
                // It stays awake, costing CPU but usable; tried again next round.
                tracing::warn!(sandbox_id = %waiting.id, error = %crate::error_chain(&err), "cannot freeze a pooled sandbox");
            }
        }
    }

    /// Drop `template`'s stale sandboxes, and boot one if it is short; whether it did.
    async fn fill_one(&self, template: &str, size: usize) -> bool {
        let Ok(origin) = self.origin(template) else {
            // Not built (yet), or deleted: nothing to pool.
            self.drain_pool(template).await;
            return false;
        };
        // Queued under the name creates resolve to (an alias's template).
        let template = origin.name.clone();
        let size = self
            .pool
            .demand()
            .entry(template.clone())
            .or_default()
            .target(size, Instant::now());
        let stale: Vec<SandboxId> = {
            let mut ready = self.pool.ready();
            let queue = ready.entry(template.clone()).or_default();
            let (keep, stale): (VecDeque<Waiting>, VecDeque<Waiting>) =
                queue.drain(..).partition(|w| w.rootfs == origin.rootfs);
            *queue = keep;
            stale.into_iter().map(|w| w.id).collect()
        };
        for id in stale {
            self.discard_pooled(&id, "its template was rebuilt").await;
        }
        let short = self.pool.ready().get(&template).map_or(0, VecDeque::len) < size;
        if !short || available_mb() < MIN_AVAILABLE_MB {
            return false;
        }
        let req = CreateRequest {
            template: template.clone(),
            metadata: BTreeMap::from([(POOL_METADATA.to_owned(), template.clone())]),
            secure: true,
            public_traffic: true,
            ..CreateRequest::default()
        };
        let rootfs = origin.rootfs.clone();
        self.pool.wait_for_quiet().await;
        match self.create_from(req, origin, SandboxState::Pooled).await {
            Ok(rec) if !self.pool.is_closed() => {
                tracing::debug!(sandbox_id = %rec.id, template, "pooled");
                self.pool
                    .ready()
                    .entry(template)
                    .or_default()
                    .push_back(Waiting {
                        id: rec.id,
                        rootfs,
                        token: rec.envd_access_token,
                        pooled_at: Instant::now(),
                    });
                true
            }
            Ok(rec) => {
                self.discard_pooled(&rec.id, "the server is stopping").await;
                false
            }
            Err(err) => {
                tracing::warn!(%template, error = %crate::error_chain(&err), "cannot boot a sandbox for the pool; retrying later");
                false
            }
        }
    }

    /// Kill every sandbox waiting in `template`'s pool (a template being deleted).
    pub async fn drain_pool(&self, template: &str) {
        let waiting = self.pool.ready().remove(template).unwrap_or_default();
        for w in waiting {
            self.discard_pooled(&w.id, "its template is gone").await;
        }
    }

    async fn discard_pooled(&self, id: &SandboxId, reason: &str) {
        if let Err(err) = self.finish_kill(id, SandboxState::Pooled, reason).await {
            tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&err), "removing a pooled sandbox");
        }
    }

    /// A pooled sandbox of `origin`'s build, made the caller's; `None` when the pool is
    /// empty or the hand-out failed (the caller then boots one cold). Every call counts
    /// as demand for the template.
    pub(super) async fn hand_out(
        &self,
        req: &CreateRequest,
        origin: &Origin,
    ) -> Option<SandboxRecord> {
        let now = Instant::now();
        self.pool
            .demand()
            .entry(origin.name.clone())
            .or_default()
            .record(now);
        *self.pool.last_create() = Some(now);
        let waiting = {
            let mut ready = self.pool.ready();
            let queue = ready.get_mut(&origin.name)?;
            let at = queue.iter().position(|w| w.rootfs == origin.rootfs)?;
            queue.remove(at)?
        };
        self.pool.wake.notify_one();
        match self.configure_pooled(req, &waiting).await {
            Ok(rec) => {
                tracing::info!(sandbox_id = %rec.id, template = %origin.name, "handed out from the pool");
                Some(rec)
            }
            Err(err) => {
                tracing::warn!(sandbox_id = %waiting.id, error = %crate::error_chain(&err), "a pooled sandbox could not be handed out; starting one cold");
                self.discard_pooled(&waiting.id, "hand-out failed").await;
                None
            }
        }
    }

    async fn configure_pooled(
        &self,
        req: &CreateRequest,
        waiting: &Waiting,
    ) -> Result<SandboxRecord, SandboxError> {
        // Its normal CPU share before it wakes: it is someone's sandbox from here on.
        self.runtime
            .set_background(&waiting.id, false)
            .map_err(|source| SandboxError::Wake {
                id: waiting.id.clone(),
                source: Box::new(source),
            })?;
        let mut rec = self
            .catalog
            .get_sandbox(&waiting.id)?
            .filter(|r| r.state == SandboxState::Pooled)
            .ok_or_else(|| SandboxError::NotFound(waiting.id.clone()))?;
        let address = rec
            .address
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| SandboxError::NotFound(waiting.id.clone()))?;
        let now = now_ms();
        rec.template_id = req.template.clone();
        rec.started_at_ms = now;
        rec.end_at_ms = now + self.clamp_timeout(req.timeout_seconds).as_millis() as i64;
        rec.metadata = req.metadata.clone();
        rec.env_vars = req.env_vars.clone();
        // The agent already has the template's environment and a token of its own.
        let agent_as_booted = req.secure && req.env_vars.is_empty() && waiting.token.is_some();
        rec.envd_access_token = if agent_as_booted {
            waiting.token.clone()
        } else {
            req.secure.then(generate_access_token)
        };
        rec.auto_pause = req.auto_pause;
        rec.auto_resume = req.auto_resume;
        rec.network = super::network::rules_of(&req.egress);
        rec.traffic_access_token = (!req.public_traffic).then(generate_access_token);
        // Thawed here only when its agent must be told something. Otherwise it stays
        // frozen (dozing) until its first request, as a dozing sandbox does: the proxy's
        // preconnect, sent as this create answers, wakes it while the creator reads the
        // answer, instead of the creator waiting for the thaw (~3 ms).
        if !agent_as_booted {
            let _awake = self.enter(&rec.id)?;
            let init = InitRequest {
                // An empty token clears the pool's: the create asked for none.
                access_token: Some(rec.envd_access_token.clone().unwrap_or_default()),
                env_vars: Some(rec.env_vars.clone()),
                ..InitRequest::default()
            };
            self.agent
                .init(
                    std::net::SocketAddr::new(address, silo_protocol::ports::ENVD),
                    &init,
                    waiting.token.as_deref(),
                )
                .await
                .map_err(|source| SandboxError::Init {
                    id: rec.id.clone(),
                    source,
                })?;
        }
        if req.egress != crate::network::EgressPolicy::default() {
            self.runtime
                .set_egress(&rec.id, &req.egress)
                .await
                .map_err(|source| SandboxError::Network {
                    id: rec.id.clone(),
                    source: Box::new(source),
                })?;
        }
        self.catalog.hand_out(&rec)?;
        rec.state = SandboxState::Running;
        Ok(rec)
    }

    /// Stop filling and kill every pooled sandbox (they are disposable, and no one
    /// would pick them up after a restart).
    pub(super) async fn close_pool(&self) {
        self.pool
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.pool.wake.notify_one();
        let waiting: Vec<SandboxId> = self
            .pool
            .ready()
            .drain()
            .flat_map(|(_, queue)| queue.into_iter().map(|w| w.id))
            .collect();
        // Each teardown waits ~1.3 s on `runsc delete`; a pool grown by demand holds
        // dozens, more than a stop may wait for one after another.
        futures_util::stream::iter(waiting)
            .for_each_concurrent(DISCARDS_AT_STOP, |id| async move {
                self.discard_pooled(&id, "the server is stopping").await;
            })
            .await;
    }
}

/// MemAvailable of /proc/meminfo in MiB (unknown: plenty).
fn available_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_grow_with_recent_demand_within_bounds() {
        let start = Instant::now();
        let mut demand = Demand::default();
        assert_eq!(demand.target(2, start), 2);
        for i in 0..5 {
            demand.record(start + Duration::from_secs(i));
        }
        assert_eq!(demand.target(2, start + Duration::from_secs(5)), 5);
        for i in 5..20 {
            demand.record(start + Duration::from_secs(i));
        }
        // At most DEMAND_FACTOR times the configured size.
        assert_eq!(
            demand.target(2, start + Duration::from_secs(20)),
            2 * DEMAND_FACTOR
        );
        // Demand older than the window is forgotten.
        let later = start + Duration::from_secs(19) + DEMAND_WINDOW + Duration::from_secs(1);
        assert_eq!(demand.target(2, later), 2);
        // A template not configured for a pool gets none, whatever the demand.
        demand.record(later);
        assert_eq!(demand.target(0, later), 0);
    }
}
