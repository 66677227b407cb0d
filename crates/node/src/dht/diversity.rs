//! Bucket diversity: at most a few peers of one subnet (IPv4 /24, IPv6 /48)
//! per k-bucket, so one operator with one subnet cannot fill a bucket (an
//! eclipse attack). Loopback addresses are exempt so local test networks
//! work.

use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// The subnet an address belongs to for diversity purposes, or `None` when
/// it is exempt (loopback, or no IP at all).
pub(crate) fn subnet(addr: &Multiaddr) -> Option<(u8, [u8; 6])> {
    let ip = addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })?;
    if ip.is_loopback() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (4, [o[0], o[1], o[2], 0, 0, 0])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (6, [o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    })
}

/// Whether a peer at `addr` may join a bucket whose members have
/// `bucket_addrs` (one list per member), given at most `limit` per subnet
/// (0 = no limit).
pub(crate) fn admits<'a>(
    addr: &Multiaddr,
    bucket_addrs: impl IntoIterator<Item = &'a [Multiaddr]>,
    limit: usize,
) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(net) = subnet(addr) else {
        return true;
    };
    let same = bucket_addrs
        .into_iter()
        .filter(|member| member.iter().any(|a| subnet(a) == Some(net)))
        .count();
    same < limit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_subnet_fills_up_to_its_limit() {
        let members = [
            vec![a("/ip4/203.0.113.5/tcp/1")],
            vec![a("/ip4/203.0.113.9/tcp/1")],
            vec![a("/ip4/198.51.100.1/tcp/1")],
        ];
        let view: Vec<&[Multiaddr]> = members.iter().map(|m| m.as_slice()).collect();
        assert!(!admits(&a("/ip4/203.0.113.77/tcp/1"), view.clone(), 2));
        assert!(admits(&a("/ip4/203.0.114.77/tcp/1"), view.clone(), 2));
        assert!(admits(&a("/ip4/203.0.113.77/tcp/1"), view.clone(), 3));
        assert!(admits(&a("/ip4/203.0.113.77/tcp/1"), view, 0));
    }

    #[test]
    fn ipv6_groups_by_48_and_loopback_is_exempt() {
        let members = [vec![a("/ip6/2001:db8:1::1/tcp/1")]];
        let view: Vec<&[Multiaddr]> = members.iter().map(|m| m.as_slice()).collect();
        assert!(!admits(
            &a("/ip6/2001:db8:1:ffff::2/tcp/1"),
            view.clone(),
            1
        ));
        assert!(admits(&a("/ip6/2001:db8:2::2/tcp/1"), view.clone(), 1));
        let loopback = [
            vec![a("/ip4/127.0.0.1/tcp/1")],
            vec![a("/ip4/127.0.0.1/tcp/2")],
        ];
        let view: Vec<&[Multiaddr]> = loopback.iter().map(|m| m.as_slice()).collect();
        assert!(admits(&a("/ip4/127.0.0.1/tcp/3"), view, 1));
    }
}
