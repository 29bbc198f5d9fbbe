//! Address leases: one /30 per sandbox out of a configured private pool.
//!
//! A lease is a file `<dir>/<slot>` holding the sandbox id, created atomically
//! (written under a temporary name, then hard-linked, which fails if the slot is
//! taken). Leases therefore survive a restart of silo, two allocators never hand out
//! one slot, and a crash mid-allocation leaves at worst a temporary file that
//! [`AddressPool::release`] removes too.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use silo_protocol::ids::SandboxId;

use super::policy::Cidr;
use super::routes::Route;
use super::{NetNames, NetworkError};

/// Prefix length of each sandbox's link: network, gateway, sandbox, broadcast.
pub const LINK_PREFIX_LEN: u8 = 30;
const LINK_SIZE: u32 = 1 << (32 - LINK_PREFIX_LEN);

/// The addresses of one sandbox's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub slot: u32,
    /// The host side of the veth.
    pub gateway: Ipv4Addr,
    /// The sandbox side; the agent listens here.
    pub ip: Ipv4Addr,
}

/// A pool of /30 links, e.g. `10.213.0.0/16` (16384 sandboxes).
#[derive(Debug)]
pub struct AddressPool {
    dir: PathBuf,
    range: Cidr,
    slots: u32,
    next: AtomicU32,
}

impl AddressPool {
    /// `base/prefix_len` must be aligned and hold at least one /30.
    pub fn new(dir: PathBuf, base: Ipv4Addr, prefix_len: u8) -> Result<Self, NetworkError> {
        let invalid = || NetworkError::InvalidPool { base, prefix_len };
        if !(1..=LINK_PREFIX_LEN).contains(&prefix_len) {
            return Err(invalid());
        }
        let range = Cidr::new(base, prefix_len);
        if range.addr != base {
            return Err(invalid());
        }
        Ok(AddressPool {
            dir,
            range,
            slots: (1u32 << (32 - prefix_len)) / LINK_SIZE,
            next: AtomicU32::new(0),
        })
    }

    /// The addresses it hands out.
    pub fn range(&self) -> Cidr {
        self.range
    }

    /// The addresses of `slot`.
    pub fn lease(&self, slot: u32) -> Lease {
        let network = self.range.addr.to_bits() + slot * LINK_SIZE;
        Lease {
            slot,
            gateway: Ipv4Addr::from(network + 1),
            ip: Ipv4Addr::from(network + 2),
        }
    }

    /// Lease a free slot for `id`.
    pub fn allocate(&self, id: &SandboxId) -> Result<Lease, NetworkError> {
        let io_err = |source| NetworkError::AllocateAddress {
            id: id.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(io_err)?;
        let tmp = self.dir.join(format!(".tmp-{id}"));
        let mut file = fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(id.as_str().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_err)?;
        drop(file);
        let start = self.next.load(Ordering::Relaxed);
        let result = (0..self.slots)
            .map(|i| (start + i) % self.slots)
            .find_map(
                |slot| match fs::hard_link(&tmp, self.dir.join(slot.to_string())) {
                    Ok(()) => Some(Ok(slot)),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
                    Err(e) => Some(Err(io_err(e))),
                },
            );
        let _ = fs::remove_file(&tmp);
        let slot = result.unwrap_or(Err(NetworkError::PoolExhausted {
            slots: self.slots,
            id: id.clone(),
        }))?;
        self.next.store((slot + 1) % self.slots, Ordering::Relaxed);
        Ok(self.lease(slot))
    }

    /// The lease `id` holds, if any.
    pub fn find(&self, id: &SandboxId) -> Result<Option<Lease>, NetworkError> {
        Ok(self
            .owned_files(id)
            .map_err(|source| NetworkError::ReadLeases {
                dir: self.dir.clone(),
                source,
            })?
            .into_iter()
            .find_map(|(name, _)| name.parse().ok())
            .map(|slot| self.lease(slot)))
    }

    /// Give back whatever `id` holds. Idempotent.
    pub fn release(&self, id: &SandboxId) -> Result<(), NetworkError> {
        let io_err = |source| NetworkError::ReleaseAddress {
            id: id.clone(),
            source,
        };
        for (_, path) in self.owned_files(id).map_err(io_err)? {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The routes among `routes` into this pool that are not the link of a sandbox holding
    /// a lease here (its veth, with exactly its /30): another server's sandboxes, or a
    /// network of the host. Addresses there would be routed away from the sandbox that gets
    /// them. The default route is nobody's.
    pub fn foreign_routes(&self, routes: &[Route]) -> Result<Vec<Route>, NetworkError> {
        let mut foreign = Vec::new();
        for route in routes {
            let destination = &route.destination;
            if destination.prefix_len == 0 || !destination.overlaps(&self.range) {
                continue;
            }
            let own = destination.prefix_len == LINK_PREFIX_LEN
                && self
                    .holder(self.slot_of(destination.addr))
                    .map_err(|source| NetworkError::ReadLeases {
                        dir: self.dir.clone(),
                        source,
                    })?
                    .is_some_and(|id| NetNames::of(&id).veth == route.iface);
            if !own {
                foreign.push(route.clone());
            }
        }
        Ok(foreign)
    }

    fn slot_of(&self, address: Ipv4Addr) -> u32 {
        address.to_bits().wrapping_sub(self.range.addr.to_bits()) / LINK_SIZE
    }

    /// The sandbox leasing `slot`, if any.
    fn holder(&self, slot: u32) -> io::Result<Option<SandboxId>> {
        match fs::read_to_string(self.dir.join(slot.to_string())) {
            Ok(content) => Ok(content.parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The ids holding leases.
    pub fn holders(&self) -> Result<Vec<SandboxId>, NetworkError> {
        let read_err = |source| NetworkError::ReadLeases {
            dir: self.dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let mut holders = Vec::new();
        for entry in entries {
            let slot = entry.map_err(read_err)?.file_name();
            let Ok(slot) = slot.to_string_lossy().parse() else {
                continue;
            };
            holders.extend(self.holder(slot).map_err(read_err)?);
        }
        Ok(holders)
    }

    /// Number of leases held (leak accounting).
    pub fn held(&self) -> io::Result<usize> {
        match fs::read_dir(&self.dir) {
            Ok(entries) => Ok(entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Lease files (and leftover temporaries) whose content is `id`.
    fn owned_files(&self, id: &SandboxId) -> io::Result<Vec<(String, PathBuf)>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut owned = Vec::new();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            match fs::read(&path) {
                Ok(content) if content == id.as_str().as_bytes() => {
                    owned.push((entry.file_name().to_string_lossy().into_owned(), path));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(dir: &std::path::Path, prefix_len: u8) -> AddressPool {
        AddressPool::new(dir.join("leases"), Ipv4Addr::new(10, 213, 0, 0), prefix_len)
            .expect("valid pool")
    }

    #[test]
    fn leases_are_distinct_and_survive_a_restart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        let la = pool(tmp.path(), 16).allocate(&a).expect("lease a");
        // A new pool over the same dir (silo restarted) must not hand out a's slot.
        let restarted = pool(tmp.path(), 16);
        let lb = restarted.allocate(&b).expect("lease b");
        assert_ne!(la.slot, lb.slot);
        assert_eq!(la.gateway, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(la.ip, Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(lb.ip, Ipv4Addr::new(10, 213, 0, 6));
        assert_eq!(restarted.find(&a).expect("read"), Some(la));
        assert_eq!(restarted.held().expect("count"), 2);
        let mut holders = restarted.holders().expect("read");
        holders.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(holders, both);
    }

    #[test]
    fn routes_into_the_pool_are_foreign_unless_a_lease_holders_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pool = pool(tmp.path(), 16);
        let id = SandboxId::generate();
        let lease = pool.allocate(&id).expect("lease");
        let route = |iface: &str, network: Ipv4Addr, prefix_len| Route {
            iface: iface.into(),
            destination: Cidr::new(network, prefix_len),
        };
        let veth = NetNames::of(&id).veth;
        let network = Ipv4Addr::from(u32::from(lease.gateway) - 1);
        let own = route(&veth, network, 30);
        let same_slot_elsewhere = route("silo0other0000", network, 30);
        let unleased = route(&veth, Ipv4Addr::new(10, 213, 9, 0), 30);
        let host_network = route("eth0", Ipv4Addr::new(10, 0, 0, 0), 8);
        let ignored = [
            route("eth0", Ipv4Addr::UNSPECIFIED, 0),
            route("eth0", Ipv4Addr::new(192, 168, 0, 0), 24),
        ];
        let routes: Vec<_> = [
            own.clone(),
            same_slot_elsewhere.clone(),
            unleased.clone(),
            host_network.clone(),
        ]
        .into_iter()
        .chain(ignored)
        .collect();
        assert_eq!(
            pool.foreign_routes(&routes).expect("read leases"),
            vec![same_slot_elsewhere, unleased, host_network]
        );
        // Released, its link is nobody's: a veth left behind.
        pool.release(&id).expect("release");
        assert_eq!(
            pool.foreign_routes(std::slice::from_ref(&own))
                .expect("read"),
            vec![own]
        );
    }

    #[test]
    fn release_is_idempotent_and_frees_the_slot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pool = pool(tmp.path(), 29); // two /30s
        let a = SandboxId::generate();
        let b = SandboxId::generate();
        let c = SandboxId::generate();
        pool.allocate(&a).expect("a");
        pool.allocate(&b).expect("b");
        assert!(matches!(
            pool.allocate(&c),
            Err(NetworkError::PoolExhausted { slots: 2, .. })
        ));
        pool.release(&a).expect("release");
        pool.release(&a).expect("release again");
        assert_eq!(pool.find(&a).expect("read"), None);
        let lc = pool.allocate(&c).expect("c gets a's slot");
        assert_eq!(lc.slot, 0);
        assert_eq!(pool.held().expect("count"), 2);
    }

    #[test]
    fn rejects_misaligned_or_tiny_pools() {
        let dir = PathBuf::from("/nonexistent");
        assert!(AddressPool::new(dir.clone(), Ipv4Addr::new(10, 213, 0, 4), 16).is_err());
        assert!(AddressPool::new(dir.clone(), Ipv4Addr::new(10, 213, 0, 0), 31).is_err());
        assert!(AddressPool::new(dir, Ipv4Addr::new(10, 213, 0, 4), 30).is_ok());
    }
}
