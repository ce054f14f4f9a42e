//! Filters shared by every subcommand: ports, process, family.
use crate::{
    aggregate::{Existing, Obs},
    decode::Family,
};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Keep events whose local or peer port is one of these (empty: all).
    pub ports: Vec<u16>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: Option<Family>,
}

impl Filter {
    pub fn keeps_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }

    pub fn keeps_owner(&self, pid: Option<u32>, comm: Option<&str>) -> bool {
        self.pid.is_none_or(|p| pid == Some(p))
            && self.comm.as_deref().is_none_or(|c| comm == Some(c))
    }

    /// The one rule every record goes through.
    pub fn keeps_socket(
        &self,
        ports: (u16, u16),
        pid: Option<u32>,
        comm: Option<&str>,
        family: Family,
    ) -> bool {
        (self.ports.is_empty() || self.ports.contains(&ports.0) || self.ports.contains(&ports.1))
            && self.keeps_owner(pid, comm)
            && self.family.is_none_or(|f| f == family)
    }

    pub fn keeps(&self, o: &Obs) -> bool {
        self.keeps_socket((o.local_port, o.peer_port), o.pid, o.comm, o.family)
    }

    pub fn keeps_existing(&self, e: &Existing) -> bool {
        self.keeps_socket((e.local_port, e.peer_port), e.pid, e.comm, e.family)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_criterion_must_hold() {
        let any = Filter::default();
        assert!(any.keeps_socket((1, 2), None, None, Family::Ipv4));
        let f = Filter {
            ports: vec![80, 443],
            pid: Some(7),
            comm: Some("nginx".into()),
            family: Some(Family::Ipv6),
        };
        assert!(f.keeps_socket((80, 5000), Some(7), Some("nginx"), Family::Ipv6));
        assert!(f.keeps_socket((5000, 443), Some(7), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((5000, 5001), Some(7), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(8), Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), None, Some("nginx"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(7), Some("curl"), Family::Ipv6));
        assert!(!f.keeps_socket((80, 5000), Some(7), Some("nginx"), Family::Ipv4));
    }
}
