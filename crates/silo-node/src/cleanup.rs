//! The undo stack: every resource a sandbox acquires registers how to give it back.
//!
//! [`Undo`] names one step; all steps work from the sandbox id alone and are idempotent
//! (a resource already gone counts as released), so `destroy` after a restart of silo
//! simply runs the full [`Undo::PLAN`]. Steps run newest first; a failing step does
//! not stop the others, its error is collected. The one exception: the address is kept
//! when its veth or netns could not be deleted (see [`Undo::frees_the_link`]).
//!
//! A start that fails runs its stack at once. A start whose future is dropped mid-way
//! (caller cancelled) hands the stack to a background task from `Drop`.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use silo_protocol::ids::SandboxId;

use crate::gvisor::Inner;
use crate::network::{self, NetNames, NetworkError};
use crate::runsc::RunscError;

/// One release step, in acquisition order in [`Undo::PLAN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Undo {
    RemoveSandboxDir,
    RemoveDisk,
    ReleaseAddress,
    DeleteNetns,
    DeleteVeth,
    RemoveFirewall,
    RemoveCgroups,
    DeleteContainer,
}

impl Undo {
    /// Everything a started sandbox holds, in the order `start` acquires it.
    pub(crate) const PLAN: [Undo; 8] = [
        Undo::RemoveSandboxDir,
        Undo::RemoveDisk,
        Undo::ReleaseAddress,
        Undo::DeleteNetns,
        Undo::DeleteVeth,
        Undo::RemoveFirewall,
        Undo::RemoveCgroups,
        Undo::DeleteContainer,
    ];

    /// Whether the address may be reused once this step succeeded: a veth left behind
    /// still holds the route of its /30, so the next sandbox given that address would be
    /// unreachable. The address stays leased until a later run (the reaper's retry, or
    /// the resume of a saved sandbox) deletes them.
    fn frees_the_link(self) -> bool {
        matches!(self, Undo::DeleteVeth | Undo::DeleteNetns)
    }

    /// A sandbox's network: address, netns, veth and firewall rules (all a template
    /// build's RUN step holds, see `crate::step_network`).
    pub(crate) const NETWORK: &'static [Undo] = Self::PLAN.split_at(2).1.split_at(4).0;

    /// What a sandbox saved to disk by a pause gives back: everything after its dir and
    /// disk (which hold the image and its files). Resume acquires it anew.
    pub(crate) const SAVED_SANDBOX_LETS_GO: &'static [Undo] = Self::PLAN.split_at(2).1;

    async fn run(self, inner: &Inner, id: &SandboxId) -> Result<(), TeardownError> {
        match self {
            Undo::DeleteContainer => inner.runsc.delete_force(id).await.map_err(|source| {
                TeardownError::DeleteContainer {
                    id: id.clone(),
                    source,
                }
            }),
            Undo::RemoveCgroups => remove_cgroups(inner.cgroup_dirs(id)).await,
            Undo::DeleteVeth => Ok(network::delete_veth(&NetNames::of(id)).await?),
            Undo::RemoveFirewall => {
                if let Some(filter) = inner.egress.get() {
                    filter.remove(id);
                }
                let names = NetNames::of(id);
                inner
                    .firewall
                    .remove(&names)
                    .await
                    .map_err(|source| NetworkError::Firewall {
                        name: names.veth.clone(),
                        source,
                    })?;
                Ok(())
            }
            Undo::DeleteNetns => Ok(network::delete_netns(&NetNames::of(id)).await?),
            Undo::ReleaseAddress => Ok(inner.pool.release(id)?),
            Undo::RemoveDisk => {
                crate::disk::remove(&inner.sandbox_dir(id))
                    .await
                    .map_err(|source| TeardownError::RemoveDisk {
                        id: id.clone(),
                        source,
                    })
            }
            Undo::RemoveSandboxDir => {
                let path = inner.sandbox_dir(id);
                match tokio::fs::remove_dir_all(&path).await {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        Err(TeardownError::RemoveSandboxDir { path, source: e })
                    }
                    _ => Ok(()),
                }
            }
        }
    }
}

/// One failed release step.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error("delete runsc container {id}")]
    DeleteContainer {
        id: SandboxId,
        #[source]
        source: RunscError,
    },
    #[error("remove cgroup {path}; are processes still in it?")]
    RemoveCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("remove the disk of sandbox {id}")]
    RemoveDisk {
        id: SandboxId,
        #[source]
        source: crate::disk::DiskError,
    },
    #[error("remove sandbox directory {path}")]
    RemoveSandboxDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The cgroup directories a sandbox's processes may leave behind. runsc removes them
/// on a clean delete but not always after a forced one; the kernel refuses (EBUSY)
/// while the dying sandbox's tasks are still in them, so retry briefly.
async fn remove_cgroups(dirs: Vec<PathBuf>) -> Result<(), TeardownError> {
    const TRIES: u32 = 40;
    for path in dirs {
        let mut tries = 0;
        loop {
            match tokio::fs::remove_dir(&path).await {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < TRIES => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(source) => return Err(TeardownError::RemoveCgroup { path, source }),
            }
        }
    }
    Ok(())
}

/// Steps registered so far for one sandbox; runs them on failure or drop.
pub(crate) struct UndoStack {
    inner: Arc<Inner>,
    id: SandboxId,
    steps: Vec<Undo>,
}

impl UndoStack {
    pub(crate) fn new(inner: Arc<Inner>, id: SandboxId) -> Self {
        UndoStack {
            inner,
            id,
            steps: Vec::new(),
        }
    }

    /// Register `step`; call it just before acquiring, since each step is idempotent.
    pub(crate) fn push(&mut self, step: Undo) {
        self.steps.push(step);
    }

    /// Success: keep everything.
    pub(crate) fn disarm(mut self) {
        self.steps.clear();
    }

    /// Run every step, newest first; returns the failures.
    pub(crate) async fn run(mut self) -> Vec<TeardownError> {
        let steps = std::mem::take(&mut self.steps);
        run_steps(&self.inner, &self.id, steps).await
    }
}

pub(crate) async fn run_steps(
    inner: &Inner,
    id: &SandboxId,
    steps: Vec<Undo>,
) -> Vec<TeardownError> {
    run_in_order(steps, |step| async move {
        let began = std::time::Instant::now();
        let result = step.run(inner, id).await;
        tracing::debug!(sandbox_id = %id, ?step, elapsed = ?began.elapsed(), "released");
        result
    })
    .await
}

/// Run `steps` newest first through `run`, collecting the failures; the address is not
/// released after a failure to free its link (its own failure is already collected).
async fn run_in_order<E, F, Fut>(steps: Vec<Undo>, mut run: F) -> Vec<E>
where
    F: FnMut(Undo) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut errors = Vec::new();
    let mut link_kept = false;
    for step in steps.into_iter().rev() {
        if step == Undo::ReleaseAddress && link_kept {
            continue;
        }
        if let Err(e) = run(step).await {
            link_kept |= step.frees_the_link();
            errors.push(e);
        }
    }
    errors
}

impl Drop for UndoStack {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut self.steps);
        let inner = Arc::clone(&self.inner);
        let id = self.id.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    for e in run_steps(&inner, &id, steps).await {
                        tracing::warn!(sandbox_id = %id, error = %crate::error_chain(&e), "undo after cancelled start failed");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(sandbox_id = %id, "start cancelled outside a runtime; destroy it to release its resources");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` with `failing` failing; returns the steps run, in order, and the
    /// failures.
    async fn run_with(steps: &[Undo], failing: &[Undo]) -> (Vec<Undo>, Vec<Undo>) {
        let ran = std::cell::RefCell::new(Vec::new());
        let errors = run_in_order(steps.to_vec(), |step| {
            ran.borrow_mut().push(step);
            let result = if failing.contains(&step) {
                Err(step)
            } else {
                Ok(())
            };
            async move { result }
        })
        .await;
        (ran.into_inner(), errors)
    }

    #[tokio::test]
    async fn steps_run_newest_first_and_all_of_them() {
        let (ran, errors) = run_with(&Undo::PLAN, &[Undo::DeleteContainer]).await;
        let mut newest_first = Undo::PLAN.to_vec();
        newest_first.reverse();
        assert_eq!(ran, newest_first);
        assert_eq!(errors, [Undo::DeleteContainer]);
    }

    #[test]
    fn a_network_is_the_address_and_what_uses_it() {
        assert_eq!(
            Undo::NETWORK,
            [
                Undo::ReleaseAddress,
                Undo::DeleteNetns,
                Undo::DeleteVeth,
                Undo::RemoveFirewall
            ]
        );
    }

    #[tokio::test]
    async fn an_address_whose_link_is_left_is_kept() {
        for kept in [Undo::DeleteVeth, Undo::DeleteNetns] {
            let (ran, errors) = run_with(&Undo::PLAN, &[kept]).await;
            assert!(!ran.contains(&Undo::ReleaseAddress), "{kept:?} failed");
            assert!(ran.contains(&Undo::RemoveSandboxDir), "the rest still runs");
            assert_eq!(errors, [kept]);
        }
        let (ran, _) = run_with(Undo::SAVED_SANDBOX_LETS_GO, &[Undo::DeleteVeth]).await;
        assert!(!ran.contains(&Undo::ReleaseAddress));
    }
}
