//! Egress rules of a sandbox: set at create, replaced live by `update_network`, kept in
//! the catalog as last applied.

use silo_catalog::{NetworkRules, SandboxState};
use silo_protocol::ids::SandboxId;

use super::{Manager, SandboxError};
use crate::network::EgressPolicy;

impl Manager {
    /// Replace the egress rules of a running or paused sandbox; new connections follow
    /// them at once.
    pub async fn update_network(
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
    let strings = |cidrs: &[crate::network::Cidr]| cidrs.iter().map(ToString::to_string).collect();
    NetworkRules {
        internet: policy.internet,
        allow_out: strings(&policy.allow),
        deny_out: strings(&policy.deny),
    }
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
        };
        let rules = rules_of(&policy);
        assert!(!rules.internet);
        assert_eq!(rules.allow_out, vec!["1.1.1.1/32"]);
        assert_eq!(rules.deny_out, vec!["0.0.0.0/0"]);
    }
}
