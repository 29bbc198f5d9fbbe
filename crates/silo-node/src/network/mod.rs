//! Per-sandbox networking: a network namespace, a veth pair and a /30.
//!
//! For sandbox `id` (tag `t` = `id.short()`, 11 characters):
//!
//! - netns `silo-t` at `/run/netns/silo-t`, named in the OCI spec so that runsc's
//!   netstack (`--network=sandbox`) takes over its interfaces;
//! - veth `silot` (15 bytes, the kernel's limit) on the host with the lease's gateway
//!   address, its peer `eth0` inside the netns with the sandbox address and a default
//!   route via the gateway. IPv4 only: the host end has IPv6 off and `eth0` no
//!   link-local address, which runsc would hand to the sandbox (the firewall drops
//!   IPv6 from the veth as well).
//!
//! Addresses come from [`AddressPool`] (leases persisted as files). Every step here is
//! done with iproute2's `ip`, and every delete is idempotent: a missing netns or link
//! counts as deleted.
//!
//! What a sandbox may reach is [`firewall`]'s: NAT, egress rules and isolation in one
//! nftables table per pool; host-name rules are [`filter`]'s, on the host.

mod filter;
mod firewall;
mod policy;
mod pool;
mod routes;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use silo_protocol::ids::SandboxId;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub use filter::{host_resolver, EgressFilter, FilterConfig};
pub use firewall::{FilterPorts, Firewall, FirewallError};
pub use policy::{Cidr, DomainPattern, EgressPolicy, ALWAYS_BLOCKED, DEFAULT_DNS_SERVER};
pub use pool::{AddressPool, Lease, LINK_PREFIX_LEN};
pub use routes::summary as route_summary;
pub use routes::{host_routes, Route};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of silo's netns names and host veth names (leak accounting matches on it).
pub const NAME_PREFIX: &str = "silo";
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from setting up or tearing down a sandbox's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid address pool {base}/{prefix_len}: must be aligned and at most /30")]
    InvalidPool { base: Ipv4Addr, prefix_len: u8 },
    #[error("all {slots} addresses of the pool are leased (sandbox {id}); destroy sandboxes or widen the pool")]
    PoolExhausted { slots: u32, id: SandboxId },
    #[error(
        "address pool {pool} is in use on this host: {routes}; not this server's sandboxes \
         (another silo serve on the same range, one killed before it cleaned up, or a network \
         of this host). Stop that server or delete its devices (`ip link del DEVICE`), or \
         choose another range"
    )]
    PoolInUse { pool: String, routes: String },
    #[error("read the host's routes")]
    ReadRoutes(#[source] io::Error),
    #[error("lease an address for sandbox {id}")]
    AllocateAddress {
        id: SandboxId,
        #[source]
        source: io::Error,
    },
    #[error("release the address of sandbox {id}")]
    ReleaseAddress {
        id: SandboxId,
        #[source]
        source: io::Error,
    },
    #[error("sandbox {id} holds no address on this host")]
    NoAddress { id: SandboxId },
    #[error("read address leases in {dir}")]
    ReadLeases {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("create netns {name}")]
    CreateNetns {
        name: String,
        #[source]
        source: IpError,
    },
    #[error("delete netns {name}")]
    DeleteNetns {
        name: String,
        #[source]
        source: IpError,
    },
    #[error("create veth {name}")]
    CreateVeth {
        name: String,
        #[source]
        source: IpError,
    },
    #[error("turn off IPv6 on veth {name}")]
    DisableIpv6 {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("start the egress filter")]
    StartFilter(#[source] io::Error),
    #[error("firewall rules of {name}")]
    Firewall {
        name: String,
        #[source]
        source: FirewallError,
    },
    #[error("delete veth {name}")]
    DeleteVeth {
        name: String,
        #[source]
        source: IpError,
    },
}

/// A failed `ip` invocation.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("spawn ip {args}; is iproute2 installed?")]
    Spawn {
        args: String,
        #[source]
        source: io::Error,
    },
    #[error("ip {args} timed out after {IP_TIMEOUT:?}")]
    Timeout { args: String },
    #[error("ip {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The host-side names of a sandbox's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNames {
    pub netns: String,
    pub veth: String,
}

impl NetNames {
    pub fn of(id: &SandboxId) -> Self {
        NetNames {
            netns: format!("{NAME_PREFIX}-{}", id.short()),
            veth: format!("{NAME_PREFIX}{}", id.short()),
        }
    }

    /// The netns path to put in the OCI spec.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// Create netns `names.netns` with loopback up.
pub async fn create_netns(names: &NetNames) -> Result<(), NetworkError> {
    let err = |source| NetworkError::CreateNetns {
        name: names.netns.clone(),
        source,
    };
    ip(&["netns", "add", &names.netns], None)
        .await
        .map_err(err)?;
    ip(&["-n", &names.netns, "link", "set", "lo", "up"], None)
        .await
        .map_err(err)
}

/// Delete netns `names.netns`; gone already is fine.
pub async fn delete_netns(names: &NetNames) -> Result<(), NetworkError> {
    if !names.netns_path().exists() {
        return Ok(());
    }
    ip(&["netns", "delete", &names.netns], None)
        .await
        .map_err(|source| NetworkError::DeleteNetns {
            name: names.netns.clone(),
            source,
        })
}

/// Create the veth pair between host and netns and address both ends from `lease`.
pub async fn create_veth(names: &NetNames, lease: &Lease) -> Result<(), NetworkError> {
    let err = |source| NetworkError::CreateVeth {
        name: names.veth.clone(),
        source,
    };
    let host = format!(
        "link add {veth} type veth peer name eth0 netns {netns}\n\
         addr add {gw}/{LINK_PREFIX_LEN} dev {veth}\n\
         link set {veth} up\n",
        veth = names.veth,
        netns = names.netns,
        gw = lease.gateway,
    );
    ip(&["-batch", "-"], Some(&host)).await.map_err(err)?;
    disable_ipv6(&names.veth)?;
    address_inside(names, lease).await.map_err(err)
}

/// Whether the kernel has IPv6 (not booted with `ipv6.disable=1`).
fn kernel_has_ipv6() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Turn IPv6 off on a host interface: the kernel then drops IPv6 arriving on it, and
/// removes its link-local address.
fn disable_ipv6(dev: &str) -> Result<(), NetworkError> {
    if !kernel_has_ipv6() {
        return Ok(());
    }
    let path = Path::new("/proc/sys/net/ipv6/conf")
        .join(dev)
        .join("disable_ipv6");
    std::fs::write(path, "1").map_err(|source| NetworkError::DisableIpv6 {
        name: dev.to_owned(),
        source,
    })
}

/// Address, link and default route of `eth0` inside the netns (idempotent: `replace`).
/// No IPv6 link-local address, which runsc would give to the sandbox (the kernel refuses
/// the setting when it has no IPv6 at all).
async fn address_inside(names: &NetNames, lease: &Lease) -> Result<(), IpError> {
    let no_link_local = if kernel_has_ipv6() {
        "link set eth0 addrgenmode none\n"
    } else {
        ""
    };
    let inside = format!(
        "{no_link_local}\
         addr replace {ip}/{LINK_PREFIX_LEN} dev eth0\n\
         link set eth0 up\n\
         route replace default via {gw}\n",
        ip = lease.ip,
        gw = lease.gateway,
    );
    ip(&["-n", &names.netns, "-batch", "-"], Some(&inside)).await
}

/// Delete the host end of the veth (its peer goes with it); gone already is fine.
pub async fn delete_veth(names: &NetNames) -> Result<(), NetworkError> {
    if !Path::new("/sys/class/net").join(&names.veth).exists() {
        return Ok(());
    }
    ip(&["link", "delete", &names.veth], None)
        .await
        .map_err(|source| NetworkError::DeleteVeth {
            name: names.veth.clone(),
            source,
        })
}

/// How many of the host's TCP connections to `peer` are still open on the host side:
/// every state but TIME_WAIT and CLOSE. Once the host has closed its end and this is
/// zero, the peer has closed its end too.
pub fn open_connections(peer: Ipv4Addr) -> io::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(count_open(&table, peer))
}

fn count_open(proc_net_tcp: &str, peer: Ipv4Addr) -> usize {
    const TIME_WAIT: &str = "06";
    const CLOSE: &str = "07";
    // The kernel prints the address as the hex of its in-memory (network order) u32.
    let wanted = format!("{:08X}", u32::from_ne_bytes(peer.octets()));
    proc_net_tcp
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(2);
            let (Some(remote), Some(state)) = (fields.next(), fields.next()) else {
                return false;
            };
            remote.split(':').next() == Some(wanted.as_str())
                && state != TIME_WAIT
                && state != CLOSE
        })
        .count()
}

/// Run `ip args`, feeding `stdin` if given (for `-batch -`).
async fn ip(args: &[&str], stdin: Option<&str>) -> Result<(), IpError> {
    let shown = || args.join(" ");
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| IpError::Spawn {
            args: shown(),
            source,
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as ip's own failure below.
        let _ = pipe.write_all(input.as_bytes()).await;
    }
    let out = tokio::time::timeout(IP_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| IpError::Timeout { args: shown() })?
        .map_err(|source| IpError::Spawn {
            args: shown(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IpError::Failed {
            args: shown(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit() {
        let id = SandboxId::generate();
        let names = NetNames::of(&id);
        assert_eq!(names.veth.len(), 15, "IFNAMSIZ - 1");
        assert!(names.netns.starts_with("silo-"));
        assert_eq!(
            names.netns_path(),
            Path::new("/run/netns").join(&names.netns)
        );
    }

    #[test]
    fn counts_open_connections_to_one_peer() {
        // 10.218.0.2 is 0A DA 00 02 in network order: "0200DA0A" on little-endian hosts.
        let peer = Ipv4Addr::new(10, 218, 0, 2);
        let hex = format!("{:08X}", u32::from_ne_bytes(peer.octets()));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue\n\
             0: 0100DA0A:D31E {hex}:C33F 01 00000000:00000000\n\
             1: 0100DA0A:D31F {hex}:C33F 06 00000000:00000000\n\
             2: 0100DA0A:D320 {hex}:C33F 05 00000000:00000000\n\
             3: 0100007F:0BB8 0100007F:C33F 01 00000000:00000000\n"
        );
        assert_eq!(
            count_open(&table, peer),
            2,
            "established and FIN_WAIT2 count"
        );
        assert_eq!(count_open(&table, Ipv4Addr::new(10, 218, 0, 6)), 0);
    }

    #[tokio::test]
    async fn deleting_what_does_not_exist_is_fine() {
        let names = NetNames::of(&SandboxId::generate());
        delete_veth(&names).await.expect("absent veth");
        delete_netns(&names).await.expect("absent netns");
    }
}
