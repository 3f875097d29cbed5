//! A private network for a process cluster: one network namespace per node,
//! each with a veth link to a bridge in the root namespace (where the test's
//! clients run), and partitions made of iptables DROP rules inside the nodes'
//! namespaces. Root only (`ip` from iproute2, `iptables`); nothing leaves the
//! bridge's private /24.
//!
//! Names carry a per-network tag so concurrent runs do not collide; dropping
//! the network deletes its namespaces (and with them the veth links and the
//! rules) and the bridge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;

/// The port every node listens on (each has its own address).
pub const NODE_PORT: u16 = 7700;

static NETWORKS: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot build a namespace network, if it cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .flatten();
    if uid.as_deref() != Some("0") {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool).arg("-V").output().map(|o| o.status.success()).unwrap_or(false)
            || Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not installed (Debian: iproute2, iptables)"));
        }
    }
    None
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("running {args:?}"))?;
    anyhow::ensure!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

pub struct Network {
    tag: String,
    bridge: String,
    subnet: [u8; 3],
    nodes: usize,
}

impl Network {
    /// Builds a network of `nodes` namespaces on a bridge.
    pub fn create(nodes: usize) -> anyhow::Result<Network> {
        if let Some(why) = unavailable() {
            anyhow::bail!("{why}");
        }
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(31).wrapping_add(n)) % 4000;
        let tag = format!("cz{id}");
        let subnet = [10, 213 + (id / 250) as u8 % 40, (id % 250) as u8];
        let net = Network { bridge: format!("{tag}br"), tag, subnet, nodes };
        net.build().inspect_err(|_| net.teardown())?;
        Ok(net)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }

    pub fn netns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip(10 + i as u8)), NODE_PORT)
    }

    /// Where each node runs: its address and namespace.
    pub fn places(&self) -> Vec<(SocketAddr, Option<String>)> {
        (0..self.nodes).map(|i| (self.addr(i), Some(self.netns(i)))).collect()
    }

    fn build(&self) -> anyhow::Result<()> {
        let gw = format!("{}/24", self.ip(1));
        run(&["ip", "link", "add", &self.bridge, "type", "bridge"])?;
        run(&["ip", "addr", "add", &gw, "dev", &self.bridge])?;
        run(&["ip", "link", "set", &self.bridge, "up"])?;
        for i in 0..self.nodes {
            let ns = self.netns(i);
            let (outer, inner) = (format!("{}v{i}", self.tag), format!("{}p{i}", self.tag));
            let addr = format!("{}/24", self.ip(10 + i as u8));
            run(&["ip", "netns", "add", &ns])?;
            run(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "link", "set", &outer, "master", &self.bridge])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inner])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", &inner, "up"])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cuts node `from` off from node `to` in one direction: `from` drops
    /// what it would send to `to` and what it receives from it.
    fn drop_between(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let (ns, peer) = (self.netns(from), self.ip(10 + to as u8).to_string());
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
        run(&["ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"])
    }

    /// Partitions the nodes into `groups`: no traffic between nodes of
    /// different groups; nodes in no group are cut off from everyone.
    /// The test's clients (on the bridge) still reach every node.
    pub fn partition(&self, groups: &[Vec<usize>]) -> anyhow::Result<()> {
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.drop_between(a, b)?;
                }
            }
        }
        Ok(())
    }

    /// Each node keeps only the links listed for it (`links[a]` = the nodes
    /// `a` still talks to): rings and other non-transitive shapes.
    pub fn keep_links(&self, links: &[Vec<usize>]) -> anyhow::Result<()> {
        for (a, keep) in links.iter().enumerate() {
            for b in 0..self.nodes {
                if a != b && !keep.contains(&b) {
                    self.drop_between(a, b)?;
                }
            }
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.nodes {
            run(&["ip", "netns", "exec", &self.netns(i), "iptables", "-F"])?;
        }
        Ok(())
    }

    fn teardown(&self) {
        for i in 0..self.nodes {
            let _ = run(&["ip", "netns", "del", &self.netns(i)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}
