//! A small internet in network namespaces: two hosts, each behind a NAT router of its own
//! (nftables masquerade), and a "public" namespace between the routers that holds the relay
//! address.
//!
//! ```text
//!  host-a 10.0.1.2 ── 10.0.1.1 nat-a 198.51.100.2 ──┐
//!                                                  public (relay 203.0.113.1, forwards)
//!  host-b 10.0.2.2 ── 10.0.2.1 nat-b 198.51.100.6 ──┘
//! ```
//!
//! With [`Layout::OnePublic`], host B sits in the public network itself (198.51.100.6, no
//! NAT). [`NatBed::block_direct_udp`] makes the public namespace drop UDP forwarded between
//! the two routers, so only the relay connects the hosts; packets to and from the relay
//! address are never dropped.
//!
//! The routers masquerade with Linux's usual port preservation and filter inbound packets
//! that no outbound packet opened (conntrack): a "port-restricted cone" NAT, which hole
//! punching gets through when each side learns its public address (QUIC address discovery
//! at the relay) and both send at once.
//!
//! Everything lives in namespaces named `n2pt-<pid>-<n>-<role>` and is deleted on drop
//! (see [`crate::netns`]); no address or rule outside them is touched. IPv6 is off inside.

use std::net::Ipv4Addr;

use crate::{
    Failure,
    netns::{self, Netns, ip},
    proc::find_on_path,
};

/// Returns whether a bed can be built here: root (for network namespaces), `ip` and `nft`.
/// When not, says so with [`crate::skip`] (a failure under `CI=true`) and returns false.
pub fn require_nat_bed(test: &str) -> bool {
    let reason = match find_on_path("nft") {
        None => Some("nft not found (apt-get install -y nftables)".to_owned()),
        Some(_) => netns::unavailable()
            .map(|why| format!("network namespaces are unavailable (run as root): {why}")),
    };
    match reason {
        Some(reason) => {
            crate::skip(test, &reason);
            false
        }
        None => true,
    }
}

/// The relay's address, on the public namespace's loopback device.
pub const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Prefix of the namespaces' names.
const PREFIX: &str = "n2pt-";

/// Where the two hosts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Each host behind a NAT router of its own.
    BothBehindNat,
    /// Host A behind a NAT router, host B directly in the public network.
    OnePublic,
}

/// One side of the bed: its host namespace and the addresses that matter.
#[derive(Debug)]
pub struct Host {
    /// The host's namespace: run n2p here.
    pub ns: Netns,
    /// The host's own address (private behind a NAT).
    pub addr: Ipv4Addr,
    /// The address the public network sees its packets from (its router's, or its own).
    pub public_addr: Ipv4Addr,
}

/// The namespaces of a bed; dropping it deletes them all, with their devices and rules.
#[derive(Debug)]
pub struct NatBed {
    /// Host A, always behind NAT.
    pub a: Host,
    /// Host B.
    pub b: Host,
    public: Netns,
    _routers: Vec<Netns>,
}

/// The nft table in the public namespace that blocks direct UDP.
const BLOCK_TABLE: &str = "n2p_block_direct";

impl NatBed {
    /// Builds the namespaces, links, addresses, routes and NAT rules of `layout`.
    pub fn create(layout: Layout) -> Result<Self, Failure> {
        let public = Netns::create(PREFIX, "pub")?;
        no_ipv6(&public)?;
        public.sysctl("net/ipv4/ip_forward", "1")?;
        ip(&[
            "-n",
            public.name(),
            "addr",
            "add",
            &format!("{RELAY_IP}/32"),
            "dev",
            "lo",
        ])?;
        let mut routers = Vec::new();
        let a = side(&public, &mut routers, "a", 0, true)?;
        let b = side(
            &public,
            &mut routers,
            "b",
            1,
            layout == Layout::BothBehindNat,
        )?;
        Ok(Self {
            a,
            b,
            public,
            _routers: routers,
        })
    }

    /// The public namespace (where the relay runs).
    pub fn public(&self) -> &Netns {
        &self.public
    }

    /// Drops UDP forwarded between the two hosts' public addresses from now on (the relay,
    /// which the public namespace itself serves, stays reachable).
    pub fn block_direct_udp(&self) -> Result<(), Failure> {
        let (a, b) = (self.a.public_addr, self.b.public_addr);
        self.public.nft(&format!(
            "table inet {BLOCK_TABLE} {{\n\
             \x20 chain forward {{\n\
             \x20   type filter hook forward priority 0; policy accept;\n\
             \x20   ip saddr {{ {a}, {b} }} ip daddr {{ {a}, {b} }} meta l4proto udp drop\n\
             \x20 }}\n\
             }}\n"
        ))
    }

    /// Undoes [`Self::block_direct_udp`].
    pub fn allow_direct_udp(&self) -> Result<(), Failure> {
        self.public
            .nft(&format!("delete table inet {BLOCK_TABLE}\n"))
    }
}

/// Turns IPv6 off in `ns`, so only the IPv4 paths under test exist.
fn no_ipv6(ns: &Netns) -> Result<(), Failure> {
    ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
    ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")
}

/// Adds side `tag` number `i`: a router namespace masquerading host traffic onto its WAN
/// link to `public` (pushed onto `routers`) and the host behind it; or, without `nat`, the
/// host itself on that WAN link.
fn side(
    public: &Netns,
    routers: &mut Vec<Netns>,
    tag: &str,
    i: u8,
    nat: bool,
) -> Result<Host, Failure> {
    // The WAN link: 198.51.100.(4i+1) in public, .(4i+2) on the far end, a /30 each.
    let pub_ip = Ipv4Addr::new(198, 51, 100, 4 * i + 1);
    let wan_ip = Ipv4Addr::new(198, 51, 100, 4 * i + 2);
    let host = Netns::create(PREFIX, &format!("host-{tag}"))?;
    no_ipv6(&host)?;
    let wan_end = if nat {
        let router = Netns::create(PREFIX, &format!("nat-{tag}"))?;
        no_ipv6(&router)?;
        router.sysctl("net/ipv4/ip_forward", "1")?;
        routers.push(router);
        routers.last().expect("just pushed")
    } else {
        &host
    };
    let pub_dev = format!("wan-{tag}");
    veth(public, &pub_dev, wan_end, "wan")?;
    addr_up(public, &pub_dev, pub_ip, 30)?;
    addr_up(wan_end, "wan", wan_ip, 30)?;
    ip(&[
        "-n",
        wan_end.name(),
        "route",
        "add",
        "default",
        "via",
        &pub_ip.to_string(),
    ])?;
    if !nat {
        return Ok(Host {
            ns: host,
            addr: wan_ip,
            public_addr: wan_ip,
        });
    }
    let router = routers.last().expect("made above");
    let lan_router = Ipv4Addr::new(10, 0, i + 1, 1);
    let lan_host = Ipv4Addr::new(10, 0, i + 1, 2);
    veth(router, "lan", &host, "eth0")?;
    addr_up(router, "lan", lan_router, 24)?;
    addr_up(&host, "eth0", lan_host, 24)?;
    ip(&[
        "-n",
        host.name(),
        "route",
        "add",
        "default",
        "via",
        &lan_router.to_string(),
    ])?;
    // Source NAT onto the WAN address; conntrack lets in only what an outbound packet opened.
    // Unsolicited packets to the router itself are dropped, as home routers do: a hole
    // punching packet that arrives before ours went out must not leave a conntrack entry
    // that would make the masquerade pick another port for our own packets.
    router.nft(
        "table ip n2p_nat {\n\
         \x20 chain postrouting {\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname \"wan\" masquerade\n\
         \x20 }\n\
         \x20 chain forward {\n\
         \x20   type filter hook forward priority 0; policy drop;\n\
         \x20   iifname \"lan\" oifname \"wan\" accept\n\
         \x20   ct state established,related accept\n\
         \x20 }\n\
         \x20 chain input {\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   iifname \"wan\" ct state new drop\n\
         \x20 }\n\
         }\n",
    )?;
    Ok(Host {
        ns: host,
        addr: lan_host,
        public_addr: wan_ip,
    })
}

/// A veth pair: `a_dev` in `a`, `b_dev` in `b`, made inside the namespaces (never in the
/// namespace of the caller).
fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<(), Failure> {
    ip(&[
        "-n",
        a.name(),
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])
}

/// Gives `dev` in `ns` the address `addr/prefix` and brings it up.
fn addr_up(ns: &Netns, dev: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), Failure> {
    ip(&[
        "-n",
        ns.name(),
        "addr",
        "add",
        &format!("{addr}/{prefix}"),
        "dev",
        dev,
    ])?;
    ip(&["-n", ns.name(), "link", "set", dev, "up"])
}
