//! Addresses other peers observe us at, confirmed before we announce them.
//!
//! Identify tells us the address each peer sees our connection come from. A
//! node behind NAT learns its public address this way. One peer's word is not
//! enough (it could lie, or see us through a middlebox no one else sees), so
//! an observed address is announced in our peer record only once peers in
//! [`CONFIRMATIONS`] distinct subnets (IPv4 /24, IPv6 /48) have reported it.
//! Loopback and unspecified observations are ignored: they add nothing to
//! what we listen on.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Distinct observer subnets that must report an address before we announce it.
pub(crate) const CONFIRMATIONS: usize = 3;
/// Candidate addresses tracked at most (oldest forgotten first).
const MAX_CANDIDATES: usize = 64;
/// Observers remembered per candidate at most.
const MAX_OBSERVERS: usize = 16;

/// Observed-address candidates and who reported them.
#[derive(Debug, Default)]
pub(crate) struct ObservedAddrs {
    /// Candidate → subnets of the peers that reported it.
    candidates: HashMap<Multiaddr, HashSet<Vec<u8>>>,
    /// Insertion order of candidates, to forget the oldest.
    order: Vec<Multiaddr>,
    confirmed: Vec<Multiaddr>,
}

impl ObservedAddrs {
    /// Records that a peer whose connection came from `observer_addr`
    /// sees us at `observed`; `listen` are our own listen addresses (to
    /// translate an ephemeral observed port to our listening port). Returns
    /// the address if this observation confirmed it.
    pub(crate) fn observe(
        &mut self,
        observer_addr: &Multiaddr,
        observed: &Multiaddr,
        listen: &[Multiaddr],
    ) -> Option<Multiaddr> {
        let ip = first_ip(observed)?;
        if ip.is_loopback() || ip.is_unspecified() {
            return None;
        }
        let candidate = translate(observed, listen)?;
        if self.confirmed.contains(&candidate) {
            return None;
        }
        let subnet = subnet_of(first_ip(observer_addr)?);
        if !self.candidates.contains_key(&candidate) {
            if self.order.len() >= MAX_CANDIDATES {
                let oldest = self.order.remove(0);
                self.candidates.remove(&oldest);
            }
            self.order.push(candidate.clone());
        }
        let observers = self.candidates.entry(candidate.clone()).or_default();
        if observers.len() < MAX_OBSERVERS {
            observers.insert(subnet);
        }
        if observers.len() >= CONFIRMATIONS {
            self.candidates.remove(&candidate);
            self.order.retain(|a| a != &candidate);
            self.confirmed.push(candidate.clone());
            return Some(candidate);
        }
        None
    }

    /// Addresses confirmed so far.
    #[cfg(test)]
    pub(crate) fn confirmed(&self) -> &[Multiaddr] {
        &self.confirmed
    }
}

fn first_ip(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The /24 or /48 an observer is in: peers of one subnet count once.
fn subnet_of(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => v6.octets()[..6].to_vec(),
    }
}

/// The address others could dial: the observed IP with the port of our
/// listener of the same kind (an outgoing connection's port is ephemeral
/// unless the transport reuses the listening port). `None` if we listen on
/// nothing of that kind.
fn translate(observed: &Multiaddr, listen: &[Multiaddr]) -> Option<Multiaddr> {
    let ip = observed.iter().next()?;
    let shape = |a: &Multiaddr| -> Vec<&'static str> {
        a.iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .map(|p| p.tag())
            .collect()
    };
    let observed_shape = shape(observed);
    let template = listen.iter().find(|l| shape(l) == observed_shape)?;
    let mut out = Multiaddr::empty();
    out.push(ip);
    for p in template.iter().skip(1) {
        if matches!(p, Protocol::P2p(_)) {
            continue;
        }
        out.push(p);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_confirmed_by_three_subnets_and_gets_the_listening_port() {
        let mut seen = ObservedAddrs::default();
        let listen = [
            ma("/ip4/10.0.0.5/tcp/4001"),
            ma("/ip4/10.0.0.5/udp/4001/quic-v1"),
        ];
        let observed = ma("/ip4/203.0.113.7/tcp/51234");
        let want = ma("/ip4/203.0.113.7/tcp/4001");
        assert_eq!(
            seen.observe(&ma("/ip4/198.51.100.1/tcp/1"), &observed, &listen),
            None
        );
        // A second peer in the same /24 does not count again.
        assert_eq!(
            seen.observe(&ma("/ip4/198.51.100.2/tcp/1"), &observed, &listen),
            None
        );
        assert_eq!(
            seen.observe(&ma("/ip4/192.0.2.1/tcp/1"), &observed, &listen),
            None
        );
        assert_eq!(
            seen.observe(&ma("/ip6/2001:db8::1/tcp/1"), &observed, &listen),
            Some(want.clone())
        );
        assert_eq!(seen.confirmed(), std::slice::from_ref(&want));
        // Confirmed once: later reports change nothing.
        assert_eq!(
            seen.observe(&ma("/ip4/100.64.0.1/tcp/1"), &observed, &listen),
            None
        );
        // QUIC observations translate to the QUIC listener.
        let quic = ma("/ip4/203.0.113.7/udp/60000/quic-v1");
        let mut q = ObservedAddrs::default();
        let mut last = None;
        for o in [
            "/ip4/1.1.1.1/udp/1/quic-v1",
            "/ip4/2.2.2.2/udp/1/quic-v1",
            "/ip4/3.3.3.3/udp/1/quic-v1",
        ] {
            last = q.observe(&ma(o), &quic, &listen);
        }
        assert_eq!(last, Some(ma("/ip4/203.0.113.7/udp/4001/quic-v1")));
    }

    #[test]
    fn loopback_unknown_kinds_and_floods_are_ignored_or_bounded() {
        let mut seen = ObservedAddrs::default();
        let listen = [ma("/ip4/127.0.0.1/tcp/4001")];
        for i in 0..10u8 {
            let observer = ma(&format!("/ip4/10.{i}.0.1/tcp/1"));
            assert_eq!(
                seen.observe(&observer, &ma("/ip4/127.0.0.1/tcp/5555"), &listen),
                None
            );
            // We do not listen on QUIC: nothing to translate to.
            assert_eq!(
                seen.observe(&observer, &ma("/ip4/203.0.113.9/udp/9/quic-v1"), &listen),
                None
            );
        }
        assert!(seen.confirmed().is_empty());
        // Many different lies from one subnet each: bounded, never confirmed.
        for i in 0..1000u32 {
            let [a, b, c, d] = i.to_be_bytes();
            let lie = ma(&format!("/ip4/{}.{c}.{d}.1/tcp/{}", 11 + a + b, 1000 + i));
            let _ = seen.observe(&ma("/ip4/10.9.9.9/tcp/1"), &lie, &listen);
        }
        assert!(seen.candidates.len() <= MAX_CANDIDATES);
        assert!(seen.confirmed().is_empty());
    }
}
