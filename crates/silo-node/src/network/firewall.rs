//! Egress rules, NAT and isolation, in one nftables table per address pool.
//!
//! ```text
//! table inet silo_10_213_0_0_16
//!   set blocked      other sandboxes (the pool), link-local/metadata, loopback, multicast
//!   map egress       veth name → jump to that sandbox's chain
//!   chain forward    established → accept; from the pool to @blocked → drop;
//!                    iifname vmap @egress; anything else from the pool → drop
//!   chain input      from the pool: established → accept, the rest → drop (no host
//!                    service is reachable from a sandbox; the proxy connects outwards)
//!   chain postrouting  from the pool, leaving by another interface → masquerade
//!   chain sb_<tag>   one per sandbox: allowOut → accept, denyOut → drop, then
//!                    accept or drop as internet access says
//! ```
//!
//! The veth name keys a sandbox's rules because the sandbox cannot forge it (it can
//! forge source addresses: it has raw sockets). Traffic from a sandbox whose rules are
//! not installed is dropped, so a half-made sandbox never has open egress. Every change
//! is one `nft -f -` batch, applied atomically.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::NetNames;

const NFT_TIMEOUT: Duration = Duration::from_secs(10);

/// Destinations no sandbox reaches, whatever its rules say (besides the pool itself).
const ALWAYS_BLOCKED: [&str; 4] = ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"];

/// An IPv4 network, `a.b.c.d/len`; a bare address is a /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR block"))?;
        let prefix_len = match len {
            None => 32,
            Some(len) => match len.trim().parse::<u8>() {
                Ok(len) if len <= 32 => len,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to 32")),
            },
        };
        // nftables refuses host bits below the prefix; clear them as a user would mean.
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        Ok(Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What a sandbox may reach outside: allowOut wins over denyOut, and the rest
/// follows `internet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub internet: bool,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

impl Default for EgressPolicy {
    /// Internet on, as E2B's default.
    fn default() -> Self {
        EgressPolicy {
            internet: true,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }
}

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
    pub async fn install(&self) -> Result<(), FirewallError> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(FirewallError::Forwarding)?;
        nft(&self.base_batch()).await
    }

    fn base_batch(&self) -> String {
        let t = &self.table;
        let pool = self.pool;
        let blocked = std::iter::once(pool.to_string())
            .chain(ALWAYS_BLOCKED.iter().map(|s| s.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "add table inet {t}\n\
             add set inet {t} blocked {{ type ipv4_addr; flags interval; }}\n\
             flush set inet {t} blocked\n\
             add element inet {t} blocked {{ {blocked} }}\n\
             add map inet {t} egress {{ type ifname : verdict; }}\n\
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
             add rule inet {t} input ip saddr {pool} drop\n\
             add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             flush chain inet {t} postrouting\n\
             add rule inet {t} postrouting ip saddr {pool} ip daddr != {pool} masquerade\n"
        )
    }

    /// Install or replace the sandbox's egress rules, atomically.
    pub async fn apply(
        &self,
        names: &NetNames,
        policy: &EgressPolicy,
    ) -> Result<(), FirewallError> {
        nft(&self.sandbox_batch(names, policy)).await
    }

    fn sandbox_batch(&self, names: &NetNames, policy: &EgressPolicy) -> String {
        let t = &self.table;
        let chain = chain_name(names);
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
        if !policy.allow.is_empty() {
            let _ = writeln!(
                batch,
                "add rule inet {t} {chain} ip daddr {{ {} }} accept",
                set(&policy.allow)
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
        batch
    }

    /// Remove the sandbox's rules; rules already gone are fine.
    pub async fn remove(&self, names: &NetNames) -> Result<(), FirewallError> {
        let t = &self.table;
        let chain = chain_name(names);
        // Each deletion alone: one that finds nothing must not undo the other.
        for cmd in [
            format!("delete element inet {t} egress {{ \"{}\" }}\n", names.veth),
            format!("delete chain inet {t} {chain}\n"),
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
    fn parses_cidrs_and_bare_addresses() {
        let c: Cidr = "8.8.8.0/24".parse().unwrap();
        assert_eq!(c.to_string(), "8.8.8.0/24");
        assert_eq!("1.1.1.1".parse::<Cidr>().unwrap().to_string(), "1.1.1.1/32");
        assert_eq!(
            "10.1.2.3/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        for bad in ["example.com", "1.2.3.4/33", "1.2.3/24", "", "::1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sandbox_rules_put_allow_before_deny_before_the_default() {
        let fw = Firewall::new(Ipv4Addr::new(10, 213, 0, 0), 16);
        let names = NetNames::of(&SandboxId::generate());
        let policy = EgressPolicy {
            internet: false,
            allow: vec!["1.1.1.1".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
        };
        let batch = fw.sandbox_batch(&names, &policy);
        let allow = batch.find("{ 1.1.1.1/32 } accept").expect("allow rule");
        let deny = batch.find("{ 0.0.0.0/0 } drop").expect("deny rule");
        let default = batch.find(" drop\nadd element").expect("default drop");
        assert!(allow < deny && deny < default, "{batch}");
        assert!(batch.starts_with("add chain inet silo_10_213_0_0_16 sb_silo"));
        assert!(batch.contains(&format!("\"{}\" : jump sb_{}", names.veth, names.veth)));
    }

    #[test]
    fn base_rules_block_the_pool_and_fail_closed() {
        let fw = Firewall::new(Ipv4Addr::new(10, 213, 0, 0), 16);
        let batch = fw.base_batch();
        assert!(batch
            .contains("add element inet silo_10_213_0_0_16 blocked { 10.213.0.0/16, 0.0.0.0/8"));
        let vmap = batch.find("iifname vmap @egress").unwrap();
        let closed = batch.find("forward ip saddr 10.213.0.0/16 drop").unwrap();
        assert!(vmap < closed);
    }
}
