//! Network namespaces for multi-node tests: a Linux bridge in the root namespace with an
//! address of its own ([`Bridge`]), and nodes on it ([`NetNode`]), each a network namespace
//! joined to the bridge by a veth pair, with an address in the bridge's /24 and a default route
//! through the bridge. Nodes reach each other and the root namespace's servers (which listen on
//! [`Bridge::addr`]); [`NetNode::cut`] takes a node off the bridge and [`NetNode::restore`]
//! puts it back.
//!
//! Programs run in a node with [`NetNode::command`] or [`NetNode::wrap`]: the child enters the
//! node's network namespace (`setns`) just before it executes, and nothing else. That is
//! `ip netns exec` without its private mount namespace, so a FUSE mount made by a daemon in a
//! node is visible to the test (and a unix socket works across namespaces anyway).
//!
//! Names: everything one bridge makes carries a tag `PREFIX` + the process id (6 hex digits) +
//! a per-process counter (2 hex digits): the bridge `TAGb`, the root-side veth of node `k`
//! `TAGh<k>`, its namespace side `TAGn<k>` (≤ 15 characters each, the kernel's limit), and the
//! namespace `TAG-NAME`. The subnet is `10.231.<n>.0/24` with `n` picked from the pid and the
//! counter and skipped while another interface on the machine already has an address in it.
//!
//! Clean-up: a node's processes are killed and its namespace and veth deleted when the
//! [`NetNode`] drops; the bridge (and whatever of its nodes is left) when the [`Bridge`] drops,
//! also while a test unwinds from a panic. [`sweep_stale`] (run by [`Bridge::create`]) deletes
//! what runs killed before their clean-up left behind: names with the prefix whose process id
//! is no longer alive. Every `ip` call is bounded.
//!
//! Needs root and iproute2 ([`available`] says why not); tests without them print that and
//! return.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::process::output_within;

/// Bound of one `ip` command.
const IP_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest prefix: with 6 + 2 tag characters, a letter and two hex digits, interface names
/// stay within the kernel's 15.
pub const MAX_PREFIX: usize = 4;
/// Where `ip netns add` keeps the namespaces it names.
const NETNS_DIR: &str = "/run/netns";
/// The second octet of every test subnet (10.231.0.0/16).
const NET_OCTET: u8 = 231;
/// Most nodes on one bridge (.2 to .254).
const MAX_NODES: u32 = 253;

/// Bridges made by this process so far (part of every tag).
static BRIDGES: AtomicU32 = AtomicU32::new(0);

/// Fail the test, saying why, unless this process can make network namespaces and bridges: a
/// multi-node test that skipped itself would pass while checking nothing (the README's test
/// command runs as root, and `scripts/setup.sh` installs iproute2).
pub fn require() {
    if let Err(why) = available() {
        panic!("{why} (run the tests as root; scripts/setup.sh installs iproute2)");
    }
}

/// `Ok` when this process can make network namespaces and bridges (root, `ip` present), else
/// why not, for a test to print before it returns.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespace tests need root".into());
    }
    match output_within(Command::new("ip").arg("-V"), IP_TIMEOUT) {
        Ok(Some(o)) if o.status.success() => Ok(()),
        Ok(_) => Err("`ip -V` failed".into()),
        Err(e) => Err(format!("iproute2's `ip` is not available: {e}")),
    }
}

/// Run `ip ARGS`, bounded; its output, or why it failed (never panics: used in drops).
fn ip_try(args: &[&str]) -> Result<Output, String> {
    match output_within(Command::new("ip").args(args), IP_TIMEOUT) {
        Ok(Some(o)) if o.status.success() => Ok(o),
        Ok(Some(o)) => Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(None) => Err(format!(
            "ip {} took longer than {IP_TIMEOUT:?}",
            args.join(" ")
        )),
        Err(e) => Err(format!("running ip {}: {e}", args.join(" "))),
    }
}

/// Run `ip ARGS`, bounded; fail the test if it fails.
fn ip(args: &[&str]) -> Output {
    ip_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Names of the network namespaces `ip netns` knows.
fn netns_names() -> Vec<String> {
    match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Names of the root namespace's network interfaces.
fn link_names() -> Vec<String> {
    match std::fs::read_dir("/sys/class/net") {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every namespace and root-namespace interface whose name starts with `prefix` (for a test
/// that checks nothing is left behind).
pub fn leftovers(prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = netns_names()
        .into_iter()
        .map(|n| format!("netns {n}"))
        .chain(link_names().into_iter().map(|l| format!("link {l}")))
        .filter(|n| {
            n.split_once(' ')
                .is_some_and(|(_, name)| name.starts_with(prefix))
        })
        .collect();
    out.sort();
    out
}

/// The process id a tagged name carries (6 hex digits after `prefix`).
fn tag_pid(prefix: &str, name: &str) -> Option<u32> {
    let hex = name.strip_prefix(prefix)?.get(..6)?;
    u32::from_str_radix(hex, 16).ok()
}

/// Kill every process in namespace `ns` (SIGKILL) so that deleting it frees its interfaces.
fn kill_netns_pids(ns: &str) {
    let Ok(out) = ip_try(&["netns", "pids", ns]) else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .take(10_000)
    {
        // SAFETY: kill(2) on a pid the kernel listed in a namespace this process made.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Delete namespace `ns` (its processes killed first) and root-side interface `link`; what
/// fails is returned as text, never panics.
fn delete_node(ns: &str, link: Option<&str>) -> Vec<String> {
    let mut errors = Vec::new();
    if netns_names().iter().any(|n| n == ns) {
        kill_netns_pids(ns);
        if let Err(e) = ip_try(&["netns", "del", ns]) {
            errors.push(e);
        }
    }
    if let Some(l) = link {
        // Deleting one end of a veth pair deletes both, wherever the other end is.
        if link_names().iter().any(|n| n == l) {
            if let Err(e) = ip_try(&["link", "del", l]) {
                // The namespace's deletion takes its veth end, and so the pair, with it a moment
                // later: gone is what was wanted.
                if link_names().iter().any(|n| n == l) {
                    errors.push(e);
                }
            }
        }
    }
    errors
}

/// Delete the namespaces and interfaces named with `prefix` whose process is gone: the remains
/// of runs killed before their clean-up ran. Names of live processes (other tests running now)
/// are left alone. What it deleted, as `netns NAME` / `link NAME`.
pub fn sweep_stale(prefix: &str) -> Vec<String> {
    let alive = |pid: u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut swept = Vec::new();
    for ns in netns_names() {
        match tag_pid(prefix, &ns) {
            Some(pid) if !alive(pid) => {
                let errors = delete_node(&ns, None);
                if errors.is_empty() {
                    swept.push(format!("netns {ns}"));
                } else {
                    eprintln!("netns: could not sweep {ns}: {errors:?}");
                }
            }
            _ => {}
        }
    }
    for link in link_names() {
        match tag_pid(prefix, &link) {
            Some(pid) if !alive(pid) => match ip_try(&["link", "del", &link]) {
                Ok(_) => swept.push(format!("link {link}")),
                // A veth whose peer was just deleted goes with it.
                Err(e) if link_names().contains(&link) => {
                    eprintln!("netns: could not sweep {link}: {e}")
                }
                Err(_) => swept.push(format!("link {link}")),
            },
            _ => {}
        }
    }
    swept
}

/// The third octets of 10.231.0.0/16 addresses some interface on the machine has now.
fn subnets_in_use() -> Vec<u8> {
    let Ok(out) = ip_try(&["-o", "-4", "addr", "show"]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| a.octets()[..2] == [10, NET_OCTET])
        .map(|a| a.octets()[2])
        .collect()
}

/// Nodes of a bridge not yet dropped: (namespace, root-side veth).
type NodeList = Mutex<Vec<(String, String)>>;

/// A Linux bridge in the root namespace, `10.231.<n>.1/24`, up; nodes are added with
/// [`Bridge::add_node`]. Deleted on drop with every node still on it.
pub struct Bridge {
    prefix: String,
    tag: String,
    name: String,
    subnet: u8,
    next_host: AtomicU32,
    nodes: std::sync::Arc<NodeList>,
}

impl Bridge {
    /// Make a bridge whose names start with `prefix` (1 to [`MAX_PREFIX`] lower-case letters
    /// or digits, the same for every test that shares the sweep), after [`sweep_stale`] for that
    /// prefix. Fails the test if `ip` does.
    pub fn create(prefix: &str) -> Bridge {
        assert!(
            !prefix.is_empty()
                && prefix.len() <= MAX_PREFIX
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "bridge prefix {prefix:?}: 1 to {MAX_PREFIX} lower-case letters or digits"
        );
        let swept = sweep_stale(prefix);
        if !swept.is_empty() {
            eprintln!("netns: swept leftovers of killed runs: {swept:?}");
        }
        let pid = std::process::id();
        let count = BRIDGES.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{prefix}{:06x}{:02x}", pid & 0xff_ffff, count & 0xff);
        let name = format!("{tag}b");
        // A subnet no interface uses now, starting from one derived from pid and count so
        // that parallel processes start apart.
        let used = subnets_in_use();
        let start = (pid.wrapping_mul(7).wrapping_add(count.wrapping_mul(13))) % 250;
        let subnet = (0..250u32)
            .map(|i| ((start + i) % 250 + 2) as u8)
            .find(|n| !used.contains(n))
            .unwrap_or_else(|| panic!("every 10.{NET_OCTET}.x.0/24 subnet is in use"));
        let bridge = Bridge {
            prefix: prefix.to_string(),
            tag,
            name,
            subnet,
            next_host: AtomicU32::new(2),
            nodes: std::sync::Arc::new(Mutex::new(Vec::new())),
        };
        // From here on, Drop removes what was made even if a step fails.
        ip(&["link", "add", "name", &bridge.name, "type", "bridge"]);
        let cidr = format!("{}/24", bridge.addr());
        ip(&["addr", "add", &cidr, "dev", &bridge.name]);
        ip(&["link", "set", &bridge.name, "up"]);
        bridge
    }

    /// The bridge's address (`10.231.<n>.1`): where the root namespace's servers for the nodes
    /// listen.
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, NET_OCTET, self.subnet, 1)
    }

    /// A port on [`Bridge::addr`] nothing listens on now (bound and released, like
    /// [`crate::net::free_addr`]).
    pub fn free_addr(&self) -> SocketAddr {
        TcpListener::bind(SocketAddrV4::new(self.addr(), 0))
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("binding {}:0: {e}", self.addr()))
    }

    /// The bridge interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix of every name it makes.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new node `name` (letters, digits, `-`, `_`): a network namespace with `lo` up, a
    /// veth pair (one end in the namespace with the next free `.k/24`, the other on the
    /// bridge) and a default route through the bridge address.
    pub fn add_node(&self, name: &str) -> NetNode {
        assert!(
            !name.is_empty()
                && name.len() <= 32
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "node name {name:?}: 1 to 32 letters, digits, - or _"
        );
        let k = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(
            k <= MAX_NODES + 1,
            "more than {MAX_NODES} nodes on one bridge"
        );
        let ns = format!("{}-{name}", self.tag);
        let host_if = format!("{}h{k:02x}", self.tag);
        let node_if = format!("{}n{k:02x}", self.tag);
        let addr = Ipv4Addr::new(10, NET_OCTET, self.subnet, k as u8);
        let node = NetNode {
            name: ns.clone(),
            addr,
            host_if: host_if.clone(),
            bridge_addr: self.addr(),
            nodes: self.nodes.clone(),
        };
        lock(&self.nodes).push((ns.clone(), host_if.clone()));
        // The node's Drop undoes whatever of this was done if a step fails.
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", "name", &host_if, "type", "veth", "peer", "name", &node_if,
        ]);
        ip(&["link", "set", &node_if, "netns", &ns]);
        ip(&["link", "set", &host_if, "master", &self.name]);
        ip(&["link", "set", &host_if, "up"]);
        let cidr = format!("{addr}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", &node_if]);
        ip(&["-n", &ns, "link", "set", &node_if, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let via = self.addr().to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &via]);
        node
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let nodes = std::mem::take(&mut *lock(&self.nodes));
        let mut errors = Vec::new();
        for (ns, link) in &nodes {
            errors.extend(delete_node(ns, Some(link)));
        }
        if link_names().contains(&self.name) {
            if let Err(e) = ip_try(&["link", "del", &self.name]) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            eprintln!(
                "netns: clean-up of bridge {} incomplete: {errors:?}",
                self.name
            );
        }
    }
}

/// A network namespace on a [`Bridge`]. Its processes are killed and it is deleted on drop.
pub struct NetNode {
    name: String,
    addr: Ipv4Addr,
    host_if: String,
    bridge_addr: Ipv4Addr,
    nodes: std::sync::Arc<NodeList>,
}

impl NetNode {
    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The bridge's address, its default gateway (where root-namespace servers listen).
    pub fn bridge_addr(&self) -> Ipv4Addr {
        self.bridge_addr
    }

    /// `program` as a command that runs in this namespace (see [`NetNode::wrap`]).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.enter(Command::new(program))
    }

    /// A copy of `cmd` (program, arguments, environment changes, working directory) that runs
    /// in this namespace. Standard streams and other settings are not copied; set them on the
    /// result.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        self.enter(c)
    }

    /// Make `cmd`'s child join this network namespace before it executes.
    fn enter(&self, mut cmd: Command) -> Command {
        let path = format!("{NETNS_DIR}/{}", self.name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: the closure runs in the forked child before exec and makes one system call
        // (setns) on a descriptor the parent opened and the command keeps open; it allocates
        // nothing and takes no lock.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Take the node off the bridge (its bridge-side veth down): nothing reaches it and it
    /// reaches nothing until [`NetNode::restore`].
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]);
    }

    /// Put the node back on the bridge after [`NetNode::cut`].
    pub fn restore(&self) {
        ip(&["link", "set", &self.host_if, "up"]);
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        let errors = delete_node(&self.name, Some(&self.host_if));
        if !errors.is_empty() {
            eprintln!(
                "netns: clean-up of node {} incomplete: {errors:?}",
                self.name
            );
        }
        lock(&self.nodes).retain(|(ns, _)| ns != &self.name);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_carry_the_pid() {
        assert_eq!(tag_pid("dft", "dft00abcd01b"), Some(0xabcd));
        assert_eq!(tag_pid("dft", "dft00abcd01-n1"), Some(0xabcd));
        assert_eq!(tag_pid("dft", "eth0"), None);
        assert_eq!(tag_pid("dft", "dftzz"), None);
        // The longest names fit the kernel's 15 characters.
        let tag = format!("{}{:06x}{:02x}", "abcd", 0xff_ffffu32, 0xffu32);
        assert!(format!("{tag}h{:02x}", 254).len() <= 15);
    }
}
