//! Network namespaces on a bridge: a TCP server in one node reachable from another node and
//! from the root namespace, unreachable while the node is cut off, reachable again after it is
//! restored; nothing left behind after drop, after a panic, or (swept) after a killed run.
//! Needs root and iproute2; prints why and passes without them.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use dfagent_test_support::netns::{leftovers, require, sweep_stale, Bridge, NetNode};
use dfagent_test_support::process::{kill, run_bounded};
use dfagent_test_support::wait::wait_until;

/// Bound of one connection attempt.
const CONNECT: Duration = Duration::from_secs(2);
/// How long a node may take to become reachable (server start, link back up).
const REACHABLE: Duration = Duration::from_secs(20);
const PORT: u16 = 8080;

/// A TCP server in `node` on its address: answers every connection with a greeting and
/// closes it; exits by itself after two minutes without a connection.
fn greeter(node: &NetNode) -> Child {
    let script = "import socket, sys\n\
                  s = socket.socket()\n\
                  s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind((sys.argv[1], int(sys.argv[2])))\n\
                  s.listen(16)\n\
                  s.settimeout(120)\n\
                  for _ in range(100000):\n\
                  \x20   c, _ = s.accept()\n\
                  \x20   c.sendall(b'hello from ' + sys.argv[1].encode() + b'\\n')\n\
                  \x20   c.close()\n";
    node.command("python3")
        .args(["-c", script, &node.addr().to_string(), &PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting python3 in the namespace")
}

/// Whether the greeter at `addr` answers from the root namespace (bounded).
fn greets_from_root(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, CONNECT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(CONNECT));
    let mut got = String::new();
    s.read_to_string(&mut got).is_ok() && got == format!("hello from {}\n", addr.ip())
}

/// Whether the greeter at `addr` answers from inside `node` (bounded).
fn greets_from(node: &NetNode, addr: SocketAddr) -> bool {
    let script = "import socket, sys\n\
                  s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)\n\
                  sys.stdout.write(s.recv(100).decode())\n";
    let out = run_bounded(
        node.command("python3").args([
            "-c",
            script,
            &addr.ip().to_string(),
            &addr.port().to_string(),
        ]),
        Duration::from_secs(20),
    );
    out.status.success()
        && String::from_utf8_lossy(&out.stdout) == format!("hello from {}\n", addr.ip())
}

#[test]
fn nodes_reach_each_other_and_the_root_until_cut_off() {
    require();
    let prefix = "nta";
    let bridge = Bridge::create(prefix);
    let n1 = bridge.add_node("n1");
    let n2 = bridge.add_node("n2");
    assert_ne!(n1.addr(), n2.addr());
    assert_eq!(n1.bridge_addr(), bridge.addr());
    let names = leftovers(prefix);
    assert!(
        names.iter().any(|n| n == &format!("netns {}", n1.name()))
            && names
                .iter()
                .any(|n| n == &format!("link {}", bridge.name())),
        "{names:?}"
    );

    let mut server = greeter(&n1);
    let addr = SocketAddr::from((n1.addr(), PORT));
    assert!(
        wait_until(REACHABLE, || greets_from_root(addr)),
        "the server in {} never answered from the root namespace",
        n1.name()
    );
    assert!(greets_from(&n2, addr), "not reachable from the other node");
    // The node's own loopback is up.
    assert!(greets_from(&n1, addr));

    n1.cut();
    assert!(
        !greets_from_root(addr),
        "reachable from the root while cut off"
    );
    assert!(
        !greets_from(&n2, addr),
        "reachable from the other node while cut off"
    );

    n1.restore();
    assert!(
        wait_until(REACHABLE, || greets_from_root(addr)),
        "not reachable from the root after restore"
    );
    assert!(
        greets_from(&n2, addr),
        "not reachable from the other node after restore"
    );

    // The node's drop kills what runs in it.
    drop(n1);
    assert!(
        wait_until(Duration::from_secs(10), || server
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "the server outlived its namespace"
    );
    kill(&mut server);
    drop(n2);
    drop(bridge);
    assert_eq!(leftovers(prefix), Vec::<String>::new());
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    require();
    let prefix = "ntb";
    let r = std::panic::catch_unwind(|| {
        let bridge = Bridge::create(prefix);
        let _n1 = bridge.add_node("n1");
        let _n2 = bridge.add_node("n2");
        assert_eq!(
            leftovers(prefix).len(),
            5,
            "bridge, two veths, two namespaces"
        );
        panic!("the test failed");
    });
    assert!(r.is_err());
    assert_eq!(leftovers(prefix), Vec::<String>::new());
}

#[test]
fn leftovers_of_a_killed_run_are_swept_and_live_ones_kept() {
    require();
    let prefix = "ntc";
    // A pid that is gone: a child that already exited and was reaped.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    assert!(!std::path::Path::new(&format!("/proc/{dead}")).exists());
    let stale = format!("{prefix}{dead:06x}00");
    let ip = |args: &[&str]| {
        let out = run_bounded(
            std::process::Command::new("ip").args(args),
            Duration::from_secs(15),
        );
        assert!(out.status.success(), "ip {args:?}: {:?}", out);
    };
    ip(&["netns", "add", &format!("{stale}-n1")]);
    ip(&[
        "link",
        "add",
        "name",
        &format!("{stale}b"),
        "type",
        "bridge",
    ]);
    ip(&[
        "link",
        "add",
        "name",
        &format!("{stale}h02"),
        "type",
        "veth",
        "peer",
        "name",
        &format!("{stale}n02"),
    ]);
    assert_eq!(leftovers(prefix).len(), 4);

    // This process's bridge is live: a sweep keeps it.
    let bridge = Bridge::create(prefix); // sweeps the stale ones first
    let _node = bridge.add_node("n1");
    let left = leftovers(prefix);
    assert!(
        left.iter().all(|n| !n.contains(&stale)),
        "stale names survived the sweep: {left:?}"
    );
    assert!(sweep_stale(prefix).is_empty(), "a sweep took live names");
    assert_eq!(leftovers(prefix).len(), 3, "bridge, veth, namespace");
    drop(_node);
    drop(bridge);
    assert_eq!(leftovers(prefix), Vec::<String>::new());
}
