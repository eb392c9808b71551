//! Host candidates: the machine's interface addresses, filtered.

use std::net::IpAddr;

use crate::CandidateError;

/// Which interface addresses become host candidates.
///
/// The default takes every up, non-loopback address of both families and skips
/// link-local IPv6 (`fe80::/10`, which needs a scope id str0m cannot carry) and
/// IPv4 link-local (`169.254/16`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostFilter {
    /// Include loopback addresses (`127/8`, `::1`). Default off.
    pub loopback: bool,
    /// Only loopback addresses (implies `loopback`). Default off.
    pub loopback_only: bool,
    /// Include link-local addresses. Default off.
    pub link_local: bool,
    /// Include IPv4 addresses. Default on.
    pub ipv4: bool,
    /// Include IPv6 addresses. Default on.
    pub ipv6: bool,
    /// If not empty: only these addresses (those that are present on an interface).
    pub ips: Vec<IpAddr>,
    /// If not empty: only addresses of these interfaces (by name, e.g. `"eth0"`).
    pub interfaces: Vec<String>,
}

impl Default for HostFilter {
    fn default() -> Self {
        Self {
            loopback: false,
            loopback_only: false,
            link_local: false,
            ipv4: true,
            ipv6: true,
            ips: Vec::new(),
            interfaces: Vec::new(),
        }
    }
}

impl HostFilter {
    /// Loopback addresses only (tests, single-machine setups).
    pub fn loopback_only() -> Self {
        Self {
            loopback: true,
            loopback_only: true,
            ..Self::default()
        }
    }

    /// Only the given addresses (loopback ones included if asked for).
    pub fn only_ips(ips: impl IntoIterator<Item = IpAddr>) -> Self {
        Self {
            loopback: true,
            ips: ips.into_iter().collect(),
            ..Self::default()
        }
    }

    /// Only the addresses of one interface.
    pub fn interface(name: impl Into<String>) -> Self {
        Self {
            loopback: true,
            interfaces: vec![name.into()],
            ..Self::default()
        }
    }

    /// Whether an address of interface `name` passes the filter.
    pub fn admits(&self, name: &str, ip: IpAddr) -> bool {
        let loopback = ip.is_loopback();
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            // fe80::/10
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
        (if ip.is_ipv4() { self.ipv4 } else { self.ipv6 })
            && !ip.is_unspecified()
            && !ip.is_multicast()
            && (self.loopback || self.loopback_only || !loopback)
            && (!self.loopback_only || loopback)
            && (self.link_local || !link_local)
            && (self.ips.is_empty() || self.ips.contains(&ip))
            && (self.interfaces.is_empty() || self.interfaces.iter().any(|i| i == name))
    }
}

/// The machine's interface addresses that pass `filter`, in interface order, without
/// duplicates.
pub fn host_addresses(filter: &HostFilter) -> Result<Vec<IpAddr>, CandidateError> {
    let interfaces = if_addrs::get_if_addrs().map_err(CandidateError::Interfaces)?;
    let mut out = Vec::new();
    for interface in interfaces {
        let ip = interface.ip();
        if filter.admits(&interface.name, ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_filter() {
        let f = HostFilter::default();
        assert!(f.admits("eth0", ip("192.0.2.7")));
        assert!(f.admits("eth0", ip("2001:db8::7")));
        assert!(!f.admits("lo", ip("127.0.0.1")));
        assert!(!f.admits("lo", ip("::1")));
        assert!(!f.admits("eth0", ip("fe80::1")));
        assert!(!f.admits("eth0", ip("169.254.1.1")));
        assert!(!f.admits("eth0", ip("0.0.0.0")));
    }

    #[test]
    fn narrowing_filters() {
        let f = HostFilter::loopback_only();
        assert!(f.admits("lo", ip("127.0.0.1")));
        assert!(f.admits("lo", ip("::1")));
        assert!(!f.admits("eth0", ip("192.0.2.7")));
        let f = HostFilter::only_ips([ip("192.0.2.7")]);
        assert!(f.admits("eth0", ip("192.0.2.7")));
        assert!(!f.admits("eth0", ip("192.0.2.8")));
        let f = HostFilter::interface("eth1");
        assert!(f.admits("eth1", ip("192.0.2.7")));
        assert!(!f.admits("eth0", ip("192.0.2.7")));
        let f = HostFilter {
            ipv6: false,
            link_local: true,
            ..HostFilter::default()
        };
        assert!(!f.admits("eth0", ip("2001:db8::7")));
        assert!(f.admits("eth0", ip("169.254.1.1")));
    }

    #[test]
    fn the_machine_has_a_loopback_address() {
        let found = host_addresses(&HostFilter::loopback_only()).unwrap();
        assert!(found.iter().all(IpAddr::is_loopback), "{found:?}");
        assert!(found.contains(&ip("127.0.0.1")), "{found:?}");
    }
}
