//! An emulated WAN link: two network namespaces created by the benchmark itself, joined by a
//! veth pair whose both ends delay packets (netem) and limit the rate. Traffic stays inside
//! them; both are deleted on drop.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::forwarders::Net;

/// The link's shape.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Shape {
    /// Round-trip time added, in milliseconds (half on each side).
    pub(crate) rtt_ms: u32,
    /// Rate limit on each side, in Mbit/s.
    pub(crate) rate_mbit: u32,
}

/// Two namespaces joined by a shaped veth pair.
pub(crate) struct Link {
    client_ns: String,
    server_ns: String,
    veth: String,
}

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

impl Link {
    /// Creates the namespaces, the veth pair and the netem qdiscs.
    pub(crate) fn create(shape: Shape) -> Result<Self> {
        let tag = std::process::id();
        let (vc, vs) = (format!("n2pc{tag}"), format!("n2ps{tag}"));
        let link = Self {
            client_ns: format!("n2pb-c-{tag}"),
            server_ns: format!("n2pb-s-{tag}"),
            veth: vc.clone(),
        };
        ip(&["netns", "add", &link.client_ns])?;
        ip(&["netns", "add", &link.server_ns])?;
        ip(&["link", "add", &vc, "type", "veth", "peer", "name", &vs])?;
        let delay = format!("{}ms", shape.rtt_ms / 2);
        let rate = format!("{}mbit", shape.rate_mbit);
        for (ns, dev, addr) in [
            (&link.client_ns, &vc, CLIENT_IP),
            (&link.server_ns, &vs, SERVER_IP),
        ] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            run(Command::new("ip").args([
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay",
                &delay, "rate", &rate, "limit", "100000",
            ]))
            .map_err(|e| {
                let why = e.to_string();
                let why = why.rsplit("failed: ").next().unwrap_or_default().to_owned();
                anyhow::anyhow!("this kernel has no netem (`tc qdisc add … netem`: {why})")
            })?;
        }
        Ok(link)
    }

    /// Where the forwarders' two ends run.
    pub(crate) fn net(&self) -> Net {
        Net {
            client_ns: Some(self.client_ns.clone()),
            server_ns: Some(self.server_ns.clone()),
            client_ip: IpAddr::V4(CLIENT_IP),
            server_ip: IpAddr::V4(SERVER_IP),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair.
        ip(&["netns", "delete", &self.client_ns]).ok();
        ip(&["netns", "delete", &self.server_ns]).ok();
        // Only left in this namespace if set-up failed half-way.
        if Command::new("ip")
            .args(["link", "show", &self.veth])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            ip(&["link", "delete", &self.veth]).ok();
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
