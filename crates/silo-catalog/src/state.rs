//! The sandbox lifecycle as an explicit state machine.
//!
//! Every state change goes through [`SandboxState::check_transition`]; the catalog applies
//! it and records it in the same transaction, so the stored state and the history never
//! disagree.

use std::fmt;
use std::str::FromStr;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxState {
    /// Resources are being acquired; the agent is not answering yet.
    Creating,
    /// Booted from its template and waiting in the warm pool: no user has its id yet.
    Pooled,
    /// The agent answers; user traffic is routed to it.
    Running,
    /// Being checkpointed to disk.
    Pausing,
    /// Checkpointed: holds no process, memory or network device, only files on disk.
    Paused,
    /// Being restored from its checkpoint.
    Resuming,
    /// Its resources are being released.
    Killing,
    /// Gone; kept in the catalog for history only.
    Killed,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("sandbox cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: SandboxState,
    pub to: SandboxState,
}

impl SandboxState {
    pub const ALL: [SandboxState; 8] = [
        SandboxState::Creating,
        SandboxState::Pooled,
        SandboxState::Running,
        SandboxState::Pausing,
        SandboxState::Paused,
        SandboxState::Resuming,
        SandboxState::Killing,
        SandboxState::Killed,
    ];

    /// Whether `self -> to` is a legal step. Exhaustive on purpose: a new state must be
    /// placed in the machine before the code compiles.
    pub fn check_transition(self, to: SandboxState) -> Result<(), InvalidTransition> {
        use SandboxState::*;
        let ok = match self {
            Creating => matches!(to, Pooled | Running | Killing),
            Pooled => matches!(to, Running | Killing),
            Running => matches!(to, Pausing | Killing),
            Pausing => matches!(to, Paused | Running | Killing),
            Paused => matches!(to, Resuming | Killing),
            Resuming => matches!(to, Running | Paused | Killing),
            Killing => matches!(to, Killed),
            Killed => false,
        };
        if ok {
            Ok(())
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    /// Whether the sandbox still holds (or may hold) host resources.
    pub fn is_live(self) -> bool {
        !matches!(self, SandboxState::Killed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Pooled => "pooled",
            SandboxState::Running => "running",
            SandboxState::Pausing => "pausing",
            SandboxState::Paused => "paused",
            SandboxState::Resuming => "resuming",
            SandboxState::Killing => "killing",
            SandboxState::Killed => "killed",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SandboxState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown sandbox state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxState::{self, *};

    #[test]
    fn transition_table() {
        let allowed = [
            (Creating, Pooled),
            (Creating, Running),
            (Creating, Killing),
            (Pooled, Running),
            (Pooled, Killing),
            (Running, Pausing),
            (Running, Killing),
            (Pausing, Paused),
            (Pausing, Running),
            (Pausing, Killing),
            (Paused, Resuming),
            (Paused, Killing),
            (Resuming, Running),
            (Resuming, Paused),
            (Resuming, Killing),
            (Killing, Killed),
        ];
        for from in SandboxState::ALL {
            for to in SandboxState::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(
                    from.check_transition(to).is_ok(),
                    expected,
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for state in SandboxState::ALL {
            assert_eq!(state.as_str().parse::<SandboxState>().unwrap(), state);
        }
        assert!("zombie".parse::<SandboxState>().is_err());
    }
}
