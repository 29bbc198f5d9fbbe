//! Egress rules of a sandbox: set at create, replaced live by `update_network`, kept in
//! the catalog as last applied.

use std::sync::Arc;

use silo_catalog::{NetworkRules, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};
use crate::network::EgressPolicy;

impl Manager {
    /// Replace the egress rules of a running or paused sandbox; new connections follow
    /// them at once. The rules are recorded as applied even if the caller stops waiting.
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
        let rec = self.get(id)?;
        if !matches!(rec.state, SandboxState::Running | SandboxState::Paused) {
            return Err(SandboxError::WrongState {
                id: id.clone(),
                state: rec.state,
            });
        }
        self.runtime
            .set_egress(id, &policy)
            .await
            .map_err(|source| SandboxError::Network {
                id: id.clone(),
                source: Box::new(source),
            })?;
        self.catalog.set_network(id, &rules_of(&policy))?;
        tracing::info!(sandbox_id = %id, ?policy, "egress rules replaced");
        Ok(())
    }
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
    use super::*;

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
