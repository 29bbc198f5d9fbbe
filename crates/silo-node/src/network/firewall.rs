//! Egress rules, NAT and isolation, in one nftables table per address pool.
//!
//! ```text
//! table inet silo_10_213_0_0_16
//!   set blocked      other sandboxes (the pool), link-local/metadata, loopback, multicast
//!   map egress       veth name → jump to that sandbox's chain
//!   map sources      veth name → jump to that sandbox's source check
//!   set filtered     veth names of sandboxes with host-name rules
//!   chain guard      before all else: from any silo veth, anything but IPv4 → drop;
//!                    iifname vmap @sources
//!   chain prerouting from @filtered: TCP to ports 80/443 of an outside address, and
//!                    all DNS, → redirected to the egress filter's ports on the host
//!   chain forward    established → accept; from the pool to @blocked → drop;
//!                    iifname vmap @egress; anything else from the pool → drop
//!   chain input      from the pool: established → accept, redirected to the egress
//!                    filter → accept, the rest → drop (no host service is reachable
//!                    from a sandbox; the proxy connects outwards)
//!   chain postrouting  from the pool, leaving by another interface → masquerade
//!   chain sb_<tag>   one per sandbox: allowOut → accept, denyOut → drop, then
//!                    accept or drop as internet access says
//!   chain src_<tag>  one per sandbox: a source other than its own address → drop
//! ```
//!
//! The veth name keys a sandbox's rules because the sandbox cannot forge it (it can
//! forge source addresses: it has raw sockets). So the guard drops, by veth, what the
//! address rules would not see: IPv6 (the veth's link-local addresses would otherwise
//! reach host services on `[::]`) and IPv4 from another source than the sandbox's own.
//! Traffic from a sandbox whose rules are not installed is dropped, so a half-made
//! sandbox never has open egress. Every change is one `nft -f -` batch, applied
//! atomically.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::policy::{Cidr, EgressPolicy, ALWAYS_BLOCKED};
use super::{NetNames, NAME_PREFIX};

const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("spawn nft; is the nftables package installed?")]
    Spawn(#[source] io::Error),
    #[error("nft timed out after {NFT_TIMEOUT:?}")]
    Timeout,
    #[error("nft failed: {stderr}")]
    Failed { stderr: String },
    #[error("enable IPv4 forwarding")]
    Forwarding(#[source] io::Error),
}

/// Where the egress filter listens on the host (see [`super::filter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterPorts {
    pub tcp: u16,
    pub dns: u16,
}

/// The nftables table of one address pool.
#[derive(Debug, Clone)]
pub struct Firewall {
    table: String,
    pool: Cidr,
}

impl Firewall {
    pub fn new(pool_base: Ipv4Addr, prefix_len: u8) -> Self {
        let [a, b, c, d] = pool_base.octets();
        Firewall {
            table: format!("silo_{a}_{b}_{c}_{d}_{prefix_len}"),
            pool: Cidr {
                addr: pool_base,
                prefix_len,
            },
        }
    }

    /// Create (or reset) the table's shared parts and turn on IPv4 forwarding. Per
    /// sandbox chains and map entries already there are kept, so sandboxes running
    /// across a restart of silo keep their rules.
    pub async fn install(&self, filter: FilterPorts) -> Result<(), FirewallError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(FirewallError::Forwarding)?;
        nft(&self.base_batch(filter)).await
    }

    fn base_batch(&self, filter: FilterPorts) -> String {
        let t = &self.table;
        let pool = self.pool;
        let blocked = std::iter::once(pool.to_string())
            .chain(ALWAYS_BLOCKED.iter().map(Cidr::to_string))
            .collect::<Vec<_>>()
            .join(", ");
        let FilterPorts { tcp, dns } = filter;
        format!(
            "add table inet {t}\n\
             add set inet {t} blocked {{ type ipv4_addr; flags interval; }}\n\
             flush set inet {t} blocked\n\
             add element inet {t} blocked {{ {blocked} }}\n\
             add map inet {t} egress {{ type ifname : verdict; }}\n\
             add map inet {t} sources {{ type ifname : verdict; }}\n\
             add set inet {t} filtered {{ type ifname; }}\n\
             add chain inet {t} guard {{ type filter hook prerouting priority raw; policy accept; }}\n\
             flush chain inet {t} guard\n\
             add rule inet {t} guard iifname \"{NAME_PREFIX}*\" meta nfproto != ipv4 drop\n\
             add rule inet {t} guard iifname vmap @sources\n\
             add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}\n\
             flush chain inet {t} prerouting\n\
             add rule inet {t} prerouting iifname @filtered ip daddr != @blocked fib daddr type != local tcp dport {{ 80, 443 }} redirect to :{tcp}\n\
             add rule inet {t} prerouting iifname @filtered udp dport 53 redirect to :{dns}\n\
             add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}\n\
             flush chain inet {t} forward\n\
             add rule inet {t} forward ct state established,related accept\n\
             add rule inet {t} forward ip saddr {pool} ip daddr @blocked drop\n\
             add rule inet {t} forward ip saddr {pool} iifname vmap @egress\n\
             add rule inet {t} forward ip saddr {pool} drop\n\
             add rule inet {t} forward ip daddr {pool} drop\n\
             add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}\n\
             flush chain inet {t} input\n\
             add rule inet {t} input ip saddr {pool} ct state established,related accept\n\
             add rule inet {t} input ip saddr {pool} ct status dnat tcp dport {tcp} accept\n\
             add rule inet {t} input ip saddr {pool} ct status dnat udp dport {dns} accept\n\
             add rule inet {t} input ip saddr {pool} drop\n\
             add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             flush chain inet {t} postrouting\n\
             add rule inet {t} postrouting ip saddr {pool} ip daddr != {pool} masquerade\n"
        )
    }

    /// Remove the whole table (no sandbox left); gone already is fine.
    pub async fn uninstall(&self) -> Result<(), FirewallError> {
        match nft(&format!("delete table inet {}\n", self.table)).await {
            Err(FirewallError::Failed { stderr }) if is_missing(&stderr) => Ok(()),
            other => other,
        }
    }

    /// Install or replace the egress rules of the sandbox at `ip`, atomically.
    pub async fn apply(
        &self,
        names: &NetNames,
        ip: Ipv4Addr,
        policy: &EgressPolicy,
    ) -> Result<(), FirewallError> {
        nft(&self.sandbox_batch(names, ip, policy)).await
    }

    fn sandbox_batch(&self, names: &NetNames, ip: Ipv4Addr, policy: &EgressPolicy) -> String {
        let t = &self.table;
        let (chain, source) = (chain_name(names), source_chain_name(names));
        let veth = &names.veth;
        let mut batch = format!(
            "add chain inet {t} {chain}\n\
             flush chain inet {t} {chain}\n"
        );
        let set = |cidrs: &[Cidr]| {
            cidrs
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let allow = policy.allowed_cidrs();
        if !allow.is_empty() {
            let _ = writeln!(
                batch,
                "add rule inet {t} {chain} ip daddr {{ {} }} accept",
                set(&allow)
            );
        }
        if !policy.deny.is_empty() {
            let _ = writeln!(
                batch,
                "add rule inet {t} {chain} ip daddr {{ {} }} drop",
                set(&policy.deny)
            );
        }
        let verdict = if policy.internet { "accept" } else { "drop" };
        let _ = writeln!(batch, "add rule inet {t} {chain} {verdict}");
        let _ = writeln!(
            batch,
            "add element inet {t} egress {{ \"{}\" : jump {chain} }}",
            names.veth
        );
        // Adding first makes the delete safe when the element was not there.
        let _ = writeln!(
            batch,
            "add element inet {t} filtered {{ \"{}\" }}",
            names.veth
        );
        if !policy.filters_names() {
            let _ = writeln!(
                batch,
                "delete element inet {t} filtered {{ \"{}\" }}",
                names.veth
            );
        }
        let _ = write!(
            batch,
            "add chain inet {t} {source}\n\
             flush chain inet {t} {source}\n\
             add rule inet {t} {source} ip saddr != {ip} drop\n\
             add element inet {t} sources {{ \"{veth}\" : jump {source} }}\n"
        );
        batch
    }

    /// Remove the sandbox's rules; rules already gone are fine.
    pub async fn remove(&self, names: &NetNames) -> Result<(), FirewallError> {
        let t = &self.table;
        let (chain, source) = (chain_name(names), source_chain_name(names));
        let veth = &names.veth;
        // Each deletion alone: one that finds nothing must not undo the others.
        for cmd in [
            format!("delete element inet {t} filtered {{ \"{veth}\" }}\n"),
            format!("delete element inet {t} egress {{ \"{veth}\" }}\n"),
            format!("delete chain inet {t} {chain}\n"),
            format!("delete element inet {t} sources {{ \"{veth}\" }}\n"),
            format!("delete chain inet {t} {source}\n"),
        ] {
            match nft(&cmd).await {
                Err(FirewallError::Failed { stderr }) if is_missing(&stderr) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

fn chain_name(names: &NetNames) -> String {
    // The veth name is `silo<tag>`: letters and digits only, valid in a chain name.
    format!("sb_{}", names.veth)
}

fn source_chain_name(names: &NetNames) -> String {
    format!("src_{}", names.veth)
}

fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory") || stderr.contains("does not exist")
}

async fn nft(batch: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(FirewallError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as nft's own failure below.
        let _ = stdin.write_all(batch.as_bytes()).await;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| FirewallError::Timeout)?
        .map_err(FirewallError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Failed {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_protocol::ids::SandboxId;

    #[test]
    fn sandbox_rules_put_allow_before_deny_before_the_default() {
        let fw = Firewall::new(Ipv4Addr::new(10, 213, 0, 0), 16);
        let names = NetNames::of(&SandboxId::generate());
        let policy = EgressPolicy {
            internet: false,
            allow: vec!["1.1.1.1".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
            ..EgressPolicy::default()
        };
        let batch = fw.sandbox_batch(&names, Ipv4Addr::new(10, 213, 0, 2), &policy);
        let allow = batch.find("{ 1.1.1.1/32 } accept").expect("allow rule");
        let deny = batch.find("{ 0.0.0.0/0 } drop").expect("deny rule");
        let default = batch.find(" drop\nadd element").expect("default drop");
        assert!(allow < deny && deny < default, "{batch}");
        assert!(batch.starts_with("add chain inet silo_10_213_0_0_16 sb_silo"));
        assert!(batch.contains(&format!("\"{}\" : jump sb_{}", names.veth, names.veth)));
        assert!(
            batch.contains("delete element inet silo_10_213_0_0_16 filtered"),
            "no host-name rules: not redirected to the filter"
        );
        assert!(batch.contains(&format!(
            "add rule inet silo_10_213_0_0_16 src_{veth} ip saddr != 10.213.0.2 drop\n\
             add element inet silo_10_213_0_0_16 sources {{ \"{veth}\" : jump src_{veth} }}",
            veth = names.veth
        )));
    }

    #[test]
    fn host_name_rules_send_the_sandbox_through_the_filter() {
        let fw = Firewall::new(Ipv4Addr::new(10, 213, 0, 0), 16);
        let names = NetNames::of(&SandboxId::generate());
        let policy = EgressPolicy {
            allow_domains: vec!["example.com".parse().unwrap()],
            dns_servers: Some(vec![Ipv4Addr::new(1, 1, 1, 1)]),
            ..EgressPolicy::default()
        };
        let batch = fw.sandbox_batch(&names, Ipv4Addr::new(10, 213, 0, 2), &policy);
        assert!(batch.contains("ip daddr { 1.1.1.1/32 } accept"), "{batch}");
        assert!(batch.contains(&format!(
            "add element inet silo_10_213_0_0_16 filtered {{ \"{}\" }}",
            names.veth
        )));
        assert!(!batch.contains("delete element"), "{batch}");
    }

    #[test]
    fn base_rules_block_the_pool_and_fail_closed() {
        let fw = Firewall::new(Ipv4Addr::new(10, 213, 0, 0), 16);
        let batch = fw.base_batch(FilterPorts {
            tcp: 4100,
            dns: 4101,
        });
        assert!(batch
            .contains("add element inet silo_10_213_0_0_16 blocked { 10.213.0.0/16, 0.0.0.0/8"));
        assert!(batch.contains("tcp dport { 80, 443 } redirect to :4100"));
        assert!(batch.contains("udp dport 53 redirect to :4101"));
        assert!(batch.contains("ct status dnat tcp dport 4100 accept"));
        let vmap = batch.find("iifname vmap @egress").unwrap();
        let closed = batch.find("forward ip saddr 10.213.0.0/16 drop").unwrap();
        assert!(vmap < closed);
        // Ahead of NAT and conntrack, by interface, whatever the source claims.
        assert!(batch.contains("guard { type filter hook prerouting priority raw;"));
        assert!(batch.contains("guard iifname \"silo*\" meta nfproto != ipv4 drop"));
        assert!(batch.contains("guard iifname vmap @sources"));
    }
}
