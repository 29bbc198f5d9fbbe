//! The egress filter: where host-name rules are enforced, on the host, never inside the
//! sandbox (which could change anything of its own).
//!
//! For a sandbox with host names in allowOut, the firewall redirects its TCP to ports
//! 80 and 443 of outside addresses, and all its DNS, to the two sockets here:
//!
//! - [`tcp`]: reads the first bytes, takes the TLS server name or the HTTP Host header,
//!   decides with [`EgressPolicy::permits`] and, if allowed, connects to the address the
//!   sandbox asked for (`SO_ORIGINAL_DST`) and relays both ways;
//! - [`dns`]: answers REFUSED for a name the rules do not allow, and forwards the rest
//!   to a resolver the host can reach.
//!
//! Both ports are ephemeral, chosen at start and written into the firewall's shared
//! table; each server has its own.
//!
//! What the filter holds at once is capped per sandbox and over all of them ([`Slot`]):
//! each query and connection costs silo descriptors and memory, and one sandbox must
//! neither run silo out of them (the API's listener would fail with EMFILE, breaking
//! every sandbox) nor take every place from the others.

mod dns;
mod sniff;
mod tcp;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use silo_protocol::ids::SandboxId;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::firewall::FilterPorts;
use super::policy::{Cidr, EgressPolicy};

/// How the filter is set up.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    /// Destinations never connected to, whatever a sandbox's rules say.
    pub blocked: Vec<Cidr>,
    /// Where allowed DNS queries go when the sandbox names no resolver of its own.
    pub dns_upstream: SocketAddr,
}

/// The running filter; dropping it stops it.
pub struct EgressFilter {
    rules: Rules,
    ports: FilterPorts,
    _stop: DropGuard,
}

/// Host-name policies by sandbox address.
#[derive(Clone, Default)]
struct Rules(Arc<RwLock<HashMap<Ipv4Addr, Entry>>>);

#[derive(Clone)]
struct Entry {
    id: SandboxId,
    policy: Arc<EgressPolicy>,
    /// Cancelled when the sandbox goes: its relays end with it (a peer that vanished
    /// with its veth would never close them).
    gone: CancellationToken,
    /// Its places among the connections the filter holds at once, sniffed or relayed.
    connections: Arc<Semaphore>,
    /// Its places among the DNS queries the filter forwards at once.
    queries: Arc<Semaphore>,
}

/// Connections one sandbox may have in the filter at once, from accept to close: each
/// holds two of silo's descriptors (one while its host name is awaited, up to 10 s), and
/// idle ones to an allowed host cost as much as stalled sniffs.
const CONNECTIONS_PER_SANDBOX: usize = 256;
/// Connections held at once over all sandboxes, at most (memory: two relay buffers each).
const MAX_CONNECTIONS: usize = 16_384;

/// DNS queries one sandbox may have forwarded at once: a resolver that never answers
/// holds each for the upstream timeout, and must not stall the other sandboxes' DNS.
const QUERIES_PER_SANDBOX: usize = 64;
/// Queries forwarded at once over all sandboxes (one descriptor each), at most.
const MAX_QUERIES: usize = 4096;

impl Entry {
    fn new(id: &SandboxId, policy: &EgressPolicy) -> Self {
        Entry {
            id: id.clone(),
            policy: Arc::new(policy.clone()),
            gone: CancellationToken::new(),
            connections: Arc::new(Semaphore::new(CONNECTIONS_PER_SANDBOX)),
            queries: Arc::new(Semaphore::new(QUERIES_PER_SANDBOX)),
        }
    }
}

/// A place among what the filter serves at once: one of its sandbox's and one of all.
/// Dropping it gives both back.
struct Slot {
    _own: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl Slot {
    /// A place, unless the sandbox or the filter holds as many as it may: then the query
    /// or connection is refused at once rather than queued.
    fn take(own: &Arc<Semaphore>, all: &Arc<Semaphore>) -> Option<Slot> {
        Some(Slot {
            _own: Arc::clone(own).try_acquire_owned().ok()?,
            _all: Arc::clone(all).try_acquire_owned().ok()?,
        })
    }
}

/// How many of something costing `fds_each` descriptors the filter may hold at once over
/// all sandboxes: an eighth of the open-file limit's worth, and at most `max` (memory).
fn overall_cap(open_files: u64, fds_each: u64, max: usize) -> usize {
    usize::try_from(open_files / 8 / fds_each).map_or(max, |cap| cap.clamp(1, max))
}

impl Rules {
    fn of(&self, ip: Ipv4Addr) -> Option<Entry> {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).cloned()
    }
}

impl EgressFilter {
    /// Bind both sockets on every host address (ports chosen by the kernel) and serve.
    pub async fn start(config: FilterConfig) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let dns_socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
        let ports = FilterPorts {
            tcp: listener.local_addr()?.port(),
            dns: dns_socket.local_addr()?.port(),
        };
        let rules = Rules::default();
        let stop = CancellationToken::new();
        let blocked: Arc<[Cidr]> = config.blocked.into();
        let open_files = crate::fds::limit();
        let connections = overall_cap(open_files, 2, MAX_CONNECTIONS);
        let queries = overall_cap(open_files, 1, MAX_QUERIES);
        tokio::spawn(tcp::serve(
            listener,
            rules.clone(),
            Arc::clone(&blocked),
            Arc::new(Semaphore::new(connections)),
            stop.clone(),
        ));
        tokio::spawn(dns::serve(
            dns_socket,
            rules.clone(),
            dns::Upstreams {
                default: config.dns_upstream,
                blocked,
            },
            Arc::new(Semaphore::new(queries)),
            stop.clone(),
        ));
        tracing::info!(
            tcp_port = ports.tcp,
            dns_port = ports.dns,
            connections,
            queries,
            "egress filter listening"
        );
        Ok(EgressFilter {
            rules,
            ports,
            _stop: stop.drop_guard(),
        })
    }

    pub fn ports(&self) -> FilterPorts {
        self.ports
    }

    /// Take the sandbox's rules for its new connections (or forget it, when they name
    /// no host).
    pub fn set(&self, id: &SandboxId, ip: Ipv4Addr, policy: &EgressPolicy) {
        if !policy.filters_names() {
            return self.remove(id);
        }
        let mut map = self.rules.0.write().unwrap_or_else(|e| e.into_inner());
        // The same sandbox keeps its relays and its places under the new rules.
        let entry = match map.get(&ip).filter(|entry| entry.id == *id) {
            Some(old) => Entry {
                policy: Arc::new(policy.clone()),
                ..old.clone()
            },
            None => Entry::new(id, policy),
        };
        map.insert(ip, entry);
    }

    /// Forget the sandbox and end its relays; forgetting an unknown one is fine.
    pub fn remove(&self, id: &SandboxId) {
        let mut map = self.rules.0.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, entry| {
            let keep = entry.id != *id;
            if !keep {
                entry.gone.cancel();
            }
            keep
        });
    }
}

/// The first `nameserver` of the host's resolv.conf, else the local stub resolver.
pub fn host_resolver() -> SocketAddr {
    let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ip = conf
        .lines()
        .filter_map(|line| line.trim().strip_prefix("nameserver"))
        .find_map(|rest| rest.trim().parse::<Ipv4Addr>().ok())
        .unwrap_or(Ipv4Addr::new(127, 0, 0, 53));
    SocketAddr::from((ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_rules_only_for_sandboxes_with_host_names() {
        let filter = EgressFilter::start(FilterConfig {
            blocked: Vec::new(),
            dns_upstream: "127.0.0.1:9".parse().unwrap(),
        })
        .await
        .unwrap();
        let id = SandboxId::generate();
        let ip = Ipv4Addr::new(10, 213, 0, 2);
        let named = EgressPolicy {
            allow_domains: vec!["example.com".parse().unwrap()],
            ..EgressPolicy::default()
        };
        filter.set(&id, ip, &named);
        let entry = filter.rules.of(ip).expect("kept");
        // A new policy keeps the connections made under the old one.
        filter.set(&id, ip, &named);
        assert!(!entry.gone.is_cancelled());
        // Rules without host names: forgotten, and its relays end.
        filter.set(&id, ip, &EgressPolicy::default());
        assert!(filter.rules.of(ip).is_none());
        assert!(entry.gone.is_cancelled());
        filter.remove(&id);
    }

    #[test]
    fn a_sandbox_at_its_cap_leaves_room_for_the_others() {
        let all = Arc::new(Semaphore::new(3));
        let (a, b) = (Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(2)));
        let held_by_a: Vec<_> = (0..2).map(|_| Slot::take(&a, &all).expect("a")).collect();
        assert!(Slot::take(&a, &all).is_none(), "a's own cap");
        let held_by_b = Slot::take(&b, &all).expect("b still gets one");
        assert!(Slot::take(&b, &all).is_none(), "the overall cap");
        assert_eq!(a.available_permits(), 0, "a's places are a's");
        drop(held_by_b);
        drop(held_by_a);
        assert_eq!(all.available_permits(), 3, "dropping gives both back");
        assert_eq!(a.available_permits(), 2);
    }

    #[test]
    fn overall_caps_follow_the_open_file_limit() {
        assert_eq!(overall_cap(1024, 2, 16_384), 64);
        assert_eq!(overall_cap(1024, 1, 4096), 128);
        assert_eq!(overall_cap(1 << 20, 1, 4096), 4096, "bounded");
        assert_eq!(overall_cap(4, 2, 4096), 1, "never none");
    }
}
