//! The process's open-file limit. silo holds descriptors for every sandbox (runsc's
//! pipes and logs, proxied and relayed connections), far more than the usual soft limit
//! of 1024 allows.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raise the soft limit to the hard one (only root may go beyond that); returns the
/// limit now in force.
pub fn raise_limit() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The soft limit now (1024, the usual default, if it cannot be read).
pub(crate) fn limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}
