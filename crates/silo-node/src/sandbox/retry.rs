//! Background work on a sandbox that is tried again when it fails (a pause at timeout, a
//! kill's teardown): per sandbox, whether an attempt is under way, and how long to wait
//! after failures, doubled at each one up to [`RETRY_MAX`]. A step that keeps failing
//! is not tried twice a second forever (each try may wake the sandbox or ask runsc).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use silo_protocol::ids::SandboxId;

/// The wait after the first failure.
pub(super) const RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest wait between two tries.
pub(super) const RETRY_MAX: Duration = Duration::from_secs(300);

/// Attempts under way, and those that failed, per sandbox.
#[derive(Default)]
pub(super) struct Retries(Mutex<HashMap<SandboxId, Attempts>>);

struct Attempts {
    under_way: bool,
    failures: u32,
    not_before: Instant,
}

impl Retries {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<SandboxId, Attempts>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an attempt on `id` may begin at `now`: none is under way, and the wait
    /// after the last failure is over. If so, it is under way from here.
    pub(super) fn begin(&self, id: &SandboxId, now: Instant) -> bool {
        let mut map = self.map();
        let attempts = map.entry(id.clone()).or_insert(Attempts {
            under_way: false,
            failures: 0,
            not_before: now,
        });
        if attempts.under_way || now < attempts.not_before {
            return false;
        }
        attempts.under_way = true;
        true
    }

    pub(super) fn succeeded(&self, id: &SandboxId) {
        self.map().remove(id);
    }

    /// The attempt failed: how long until the next.
    pub(super) fn failed(&self, id: &SandboxId, now: Instant) -> Duration {
        let mut map = self.map();
        let attempts = map.entry(id.clone()).or_insert(Attempts {
            under_way: false,
            failures: 0,
            not_before: now,
        });
        attempts.under_way = false;
        attempts.failures += 1;
        let wait = retry_after(attempts.failures);
        attempts.not_before = now + wait;
        wait
    }

    /// Forget the sandboxes no longer `pending` (done some other way, or gone), but
    /// those with an attempt under way.
    pub(super) fn keep_only(&self, pending: &HashSet<SandboxId>) {
        self.map()
            .retain(|id, attempts| attempts.under_way || pending.contains(id));
    }
}

fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_waits_longer_each_time_up_to_a_limit() {
        assert_eq!(retry_after(1), RETRY_FIRST);
        assert_eq!(retry_after(2), RETRY_FIRST * 2);
        assert_eq!(retry_after(3), RETRY_FIRST * 4);
        assert_eq!(retry_after(40), RETRY_MAX);
    }
}
