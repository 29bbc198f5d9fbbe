//! Egress rules of a sandbox: set at create, replaced live by `update_network`, kept in
//! the catalog as last applied.

use std::sync::Arc;

use silo_catalog::{NetworkRules, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};
use crate::network::EgressPolicy;

impl Manager {
    /// Replace the egress rules of a running or paused sandbox; new connections follow
    /// them at once (a sandbox saved to disk gets them at its resume). The rules are
    /// recorded as applied even if the caller stops waiting.
    pub async fn update_network(
        self: &Arc<Self>,
        id: &SandboxId,
        policy: EgressPolicy,
    ) -> Result<(), SandboxError> {
        let id = id.clone();
        self.detached(move |manager| async move { manager.update_network_held(&id, policy).await })
            .await
    }

    async fn update_network_held(
        &self,
        id: &SandboxId,
        policy: EgressPolicy,
    ) -> Result<(), SandboxError> {
        // A resume reads the rules it restores the sandbox under: one under way would
        // restore the old ones after this update said the new ones were applied.
        let lock = self.lifecycle_lock(id);
        let _held = lock.lock().await;
        let rec = self.get(id)?;
        if !matches!(rec.state, SandboxState::Running | SandboxState::Paused) {
            return Err(SandboxError::WrongState {
                id: id.clone(),
                state: rec.state,
            });
        }
        if has_network(&rec) {
            self.runtime
                .set_egress(id, &policy)
                .await
                .map_err(|source| SandboxError::Network {
                    id: id.clone(),
                    source: Box::new(source),
                })?;
        }
        self.catalog.set_network(id, &rules_of(&policy))?;
        tracing::info!(sandbox_id = %id, ?policy, "egress rules replaced");
        Ok(())
    }
}

/// Whether the sandbox has a network to apply rules to. One saved to disk by a pause
/// has none (its address went back to the pool, and its row holds none): its resume
/// makes it anew under the rules the row holds.
pub(super) fn has_network(rec: &silo_catalog::SandboxRecord) -> bool {
    rec.address.is_some()
}

/// The catalog's form of a policy.
pub(super) fn rules_of(policy: &EgressPolicy) -> NetworkRules {
    fn strings<T: ToString>(items: &[T]) -> Vec<String> {
        items.iter().map(ToString::to_string).collect()
    }
    NetworkRules {
        internet: policy.internet,
        allow_out: strings(&policy.allow),
        deny_out: strings(&policy.deny),
        allow_domains: strings(&policy.allow_domains),
        dns_servers: policy.dns_servers.as_deref().map(strings),
    }
}

/// The policy a sandbox's row holds. Written by [`rules_of`], so unreadable only if the
/// catalog is damaged: the server's fault, not the request's.
pub(super) fn stored_policy(
    rec: &silo_catalog::SandboxRecord,
) -> Result<EgressPolicy, SandboxError> {
    policy_of(&rec.network).map_err(|reason| SandboxError::StoredNetwork {
        id: rec.id.clone(),
        reason,
    })
}

/// A policy from the catalog's form (written by [`rules_of`], so it parses).
pub(super) fn policy_of(rules: &NetworkRules) -> Result<EgressPolicy, String> {
    fn parsed<T: std::str::FromStr>(items: &[String]) -> Result<Vec<T>, String>
    where
        T::Err: std::fmt::Display,
    {
        items
            .iter()
            .map(|s| s.parse().map_err(|e: T::Err| e.to_string()))
            .collect()
    }
    Ok(EgressPolicy {
        internet: rules.internet,
        allow: parsed(&rules.allow_out)?,
        deny: parsed(&rules.deny_out)?,
        allow_domains: parsed(&rules.allow_domains)?,
        dns_servers: rules.dns_servers.as_deref().map(parsed).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{self, running, FakeRuntime, Verb};
    use super::*;

    fn closed() -> EgressPolicy {
        EgressPolicy {
            internet: false,
            ..EgressPolicy::default()
        }
    }

    #[tokio::test]
    async fn an_update_during_a_resume_is_applied_after_it() {
        let (runtime, manager, _dir, id) = running();
        manager.pause(&id, "test").await.unwrap();
        runtime.hold(Verb::Resume);
        let resume = tokio::spawn({
            let (manager, id) = (Arc::clone(&manager), id.clone());
            async move { manager.resume(&id, None, "test").await }
        });
        runtime.began().await;
        let update = tokio::spawn({
            let (manager, id) = (Arc::clone(&manager), id.clone());
            async move { manager.update_network(&id, closed()).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!update.is_finished(), "the update waits for the resume");
        runtime.release();
        resume.await.unwrap().unwrap();
        update.await.unwrap().unwrap();
        assert_eq!(
            runtime.done(),
            [
                Verb::Pause,
                Verb::Resume,
                Verb::ResumeAfterThaw,
                Verb::SetEgress
            ],
            "applied to the resumed sandbox"
        );
        let rec = manager.get(&id).unwrap();
        assert_eq!(stored_policy(&rec).unwrap(), closed());
    }

    #[tokio::test]
    async fn a_saved_sandbox_takes_its_rules_at_its_resume() {
        let runtime = Arc::new(FakeRuntime::default());
        let (manager, _dir) = fake::manager(Arc::clone(&runtime));
        let saved = fake::record(SandboxState::Paused, 0);
        let mut frozen = fake::record(SandboxState::Paused, 0);
        frozen.address = Some("10.213.0.2".into());
        for rec in [&saved, &frozen] {
            manager.catalog.insert_sandbox(rec).unwrap();
            manager.update_network(&rec.id, closed()).await.unwrap();
            let stored = manager.get(&rec.id).unwrap();
            assert_eq!(stored_policy(&stored).unwrap(), closed());
        }
        assert_eq!(
            runtime.done(),
            [Verb::SetEgress],
            "applied to the frozen one only"
        );
    }

    #[test]
    fn rules_keep_the_policy() {
        let policy = EgressPolicy {
            internet: false,
            allow: vec!["1.1.1.1".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
            allow_domains: vec!["*.pypi.org".parse().unwrap()],
            dns_servers: Some(vec!["9.9.9.9".parse().unwrap()]),
        };
        let rules = rules_of(&policy);
        assert!(!rules.internet);
        assert_eq!(rules.allow_out, vec!["1.1.1.1/32"]);
        assert_eq!(rules.deny_out, vec!["0.0.0.0/0"]);
        assert_eq!(rules.allow_domains, vec!["*.pypi.org"]);
        assert_eq!(policy_of(&rules).unwrap(), policy);
    }

    #[test]
    fn rules_damaged_in_the_catalog_are_the_servers_fault() {
        let mut rec = super::super::fake::record(SandboxState::Running, 0);
        rec.network.allow_out = vec!["not an address".into()];
        assert!(matches!(
            stored_policy(&rec),
            Err(SandboxError::StoredNetwork { .. })
        ));
    }
}
