//! The host's IPv4 routes (the main table, as `/proc/net/route` lists it): what on this host
//! already uses part of the sandbox address pool.

use std::io;
use std::net::Ipv4Addr;

use super::policy::Cidr;

/// One route: traffic to `destination` leaves through `iface`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub iface: String,
    pub destination: Cidr,
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.destination, self.iface)
    }
}

/// The first few of `routes`, for a message: "a, b, c and 4 more".
pub fn summary(routes: &[Route]) -> String {
    const SHOWN: usize = 3;
    let mut text = routes
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if routes.len() > SHOWN {
        text.push_str(&format!(" and {} more", routes.len() - SHOWN));
    }
    text
}

/// The routes of the host's main table.
pub fn host_routes() -> io::Result<Vec<Route>> {
    Ok(parse(&std::fs::read_to_string("/proc/net/route")?))
}

/// Rows of `/proc/net/route` after its header. Destination and mask are the kernel's 32-bit
/// values in network order, printed as host-order hex. Rows that do not parse are skipped.
fn parse(table: &str) -> Vec<Route> {
    let address = |hex: &str| u32::from_str_radix(hex, 16).ok().map(|v| v.to_ne_bytes());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
            let mask = u32::from(Ipv4Addr::from(address(mask)?));
            Some(Route {
                iface: iface.to_string(),
                destination: Cidr::new(
                    Ipv4Addr::from(address(destination)?),
                    mask.count_ones() as u8,
                ),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_table() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            silo0123456789a\t0000D50A\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n\
            broken\n";
        let routes = parse(table);
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].destination.prefix_len, 0);
        assert_eq!(routes[1].to_string(), "192.168.0.0/24 on eth0");
        assert_eq!(routes[2].to_string(), "10.213.0.0/30 on silo0123456789a");
    }

    #[test]
    fn a_summary_names_the_first_three() {
        let many: Vec<_> = (0..5)
            .map(|i| Route {
                iface: "x".into(),
                destination: Cidr::new(Ipv4Addr::new(10, 213, 0, 4 * i), 30),
            })
            .collect();
        assert_eq!(
            summary(&many),
            "10.213.0.0/30 on x, 10.213.0.4/30 on x, 10.213.0.8/30 on x and 2 more"
        );
    }
}
