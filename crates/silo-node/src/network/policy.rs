//! What a sandbox may reach outside: CIDR blocks, host names, and the decision both
//! the firewall ([`super::firewall`]) and the egress filter ([`super::filter`]) take.

use std::net::Ipv4Addr;

/// Destinations no sandbox reaches, whatever its rules say (besides the pool itself).
pub const ALWAYS_BLOCKED: [Cidr; 4] = [
    Cidr::new(Ipv4Addr::new(0, 0, 0, 0), 8),
    Cidr::new(Ipv4Addr::new(127, 0, 0, 0), 8),
    Cidr::new(Ipv4Addr::new(169, 254, 0, 0), 16),
    Cidr::new(Ipv4Addr::new(224, 0, 0, 0), 3),
];

/// The resolver a sandbox with domain rules may reach when it names none, as E2B's.
pub const DEFAULT_DNS_SERVER: Ipv4Addr = Ipv4Addr::new(8, 8, 8, 8);

/// An IPv4 network, `a.b.c.d/len`; a bare address is a /32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    /// `addr/prefix_len` with the host bits below the prefix cleared.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let addr = Ipv4Addr::from_bits(addr.to_bits() & mask(prefix_len));
        Cidr { addr, prefix_len }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & mask(self.prefix_len) == self.addr.to_bits()
    }

    /// Whether the two share an address: one of them contains the other.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

const fn mask(prefix_len: u8) -> u32 {
    match u32::MAX.checked_shl(32 - prefix_len as u32) {
        Some(mask) => mask,
        None => 0,
    }
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
        Ok(Cidr::new(addr, prefix_len))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A host name rule: `example.com` matches that name only, `*.example.com` every name
/// below it (not `example.com` itself). Kept lowercase, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPattern(String);

impl DomainPattern {
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self.0.strip_prefix("*.") {
            Some(parent) => name
                .strip_suffix(parent)
                .is_some_and(|below| below.len() > 1 && below.ends_with('.')),
            None => name == self.0,
        }
    }
}

impl std::str::FromStr for DomainPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let bare = name.strip_prefix("*.").unwrap_or(&name);
        let label_ok = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
            return Err(format!(
                "{s:?} is not a host name (letters, digits and '-', dot-separated; \
                 '*.' in front allows every name below it)"
            ));
        }
        Ok(DomainPattern(name))
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a sandbox may reach outside: allowOut (addresses and host names) wins over
/// denyOut, and the rest follows `internet`. Host names are matched on HTTP's Host
/// header (port 80) and TLS's server name (port 443), as E2B does; other ports follow
/// the address rules only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    pub internet: bool,
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
    pub allow_domains: Vec<DomainPattern>,
    /// Resolvers the sandbox may reach when it has domain rules; `None` means
    /// [`DEFAULT_DNS_SERVER`]. silo's egress filter answers its DNS itself, through
    /// the first of these (or the host's resolver).
    pub dns_servers: Option<Vec<Ipv4Addr>>,
}

impl Default for EgressPolicy {
    /// Internet on, as E2B's default.
    fn default() -> Self {
        EgressPolicy {
            internet: true,
            allow: Vec::new(),
            deny: Vec::new(),
            allow_domains: Vec::new(),
            dns_servers: None,
        }
    }
}

impl EgressPolicy {
    /// Whether traffic goes through the egress filter (see [`super::filter`]).
    pub fn filters_names(&self) -> bool {
        !self.allow_domains.is_empty()
    }

    /// The address rules the firewall enforces: allowOut plus, with domain rules, the
    /// resolvers (E2B opens them so that names resolve).
    pub fn allowed_cidrs(&self) -> Vec<Cidr> {
        let mut allow = self.allow.clone();
        if self.filters_names() {
            allow.extend(self.resolvers().iter().map(|ip| Cidr::new(*ip, 32)));
        }
        allow
    }

    pub fn resolvers(&self) -> &[Ipv4Addr] {
        self.dns_servers
            .as_deref()
            .unwrap_or(std::slice::from_ref(&DEFAULT_DNS_SERVER))
    }

    /// Whether a connection to `dst` is allowed, `name` being the host name it asked
    /// for (HTTP Host or TLS server name) when one was seen.
    pub fn permits(&self, dst: Ipv4Addr, name: Option<&str>) -> bool {
        if self.allowed_cidrs().iter().any(|c| c.contains(dst)) {
            return true;
        }
        if name.is_some_and(|name| self.name_allowed(name)) {
            return true;
        }
        if self.deny.iter().any(|c| c.contains(dst)) {
            return false;
        }
        self.internet
    }

    /// Whether `name` may be resolved: any name when no domain rules are set, else the
    /// allowed ones.
    pub fn name_allowed(&self, name: &str) -> bool {
        !self.filters_names() || self.allow_domains.iter().any(|d| d.matches(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_containment_either_way() {
        let cidr = |addr: [u8; 4], prefix_len| Cidr::new(Ipv4Addr::from(addr), prefix_len);
        let pool = cidr([10, 213, 0, 0], 16);
        assert!(cidr([10, 213, 7, 4], 30).overlaps(&pool));
        assert!(cidr([10, 0, 0, 0], 8).overlaps(&pool));
        assert!(cidr([0, 0, 0, 0], 0).overlaps(&pool));
        assert!(!cidr([10, 214, 0, 0], 30).overlaps(&pool));
        assert!(!cidr([192, 168, 0, 0], 24).overlaps(&pool));
    }

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
    fn cidrs_contain_their_addresses() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 1, 255, 3)));
        assert!(!net.contains(Ipv4Addr::new(10, 2, 0, 1)));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(ALWAYS_BLOCKED[3].contains(Ipv4Addr::new(239, 1, 1, 1)));
    }

    #[test]
    fn domain_patterns() {
        let exact: DomainPattern = "API.Example.com.".parse().unwrap();
        assert_eq!(exact.to_string(), "api.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.EXAMPLE.COM."));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));

        let wild: DomainPattern = "*.example.com".parse().unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));

        for bad in [
            "",
            "*.",
            "a..b",
            "-a.com",
            "a b.com",
            "*.*.com",
            "ex/ample.com",
        ] {
            assert!(bad.parse::<DomainPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_addresses_and_the_default() {
        let policy = EgressPolicy {
            internet: true,
            allow: vec!["1.1.1.1".parse().unwrap()],
            deny: vec!["0.0.0.0/0".parse().unwrap()],
            allow_domains: vec!["*.pypi.org".parse().unwrap()],
            dns_servers: None,
        };
        let far = Ipv4Addr::new(203, 0, 113, 9);
        assert!(policy.permits(Ipv4Addr::new(1, 1, 1, 1), None));
        assert!(policy.permits(DEFAULT_DNS_SERVER, None), "resolver opened");
        assert!(policy.permits(far, Some("files.pypi.org")));
        assert!(!policy.permits(far, Some("evil.com")));
        assert!(!policy.permits(far, None));
        assert!(policy.name_allowed("files.pypi.org") && !policy.name_allowed("evil.com"));

        let open = EgressPolicy::default();
        assert!(open.permits(far, Some("evil.com")) && open.name_allowed("evil.com"));
        assert!(!open.filters_names() && open.allowed_cidrs().is_empty());
    }
}
