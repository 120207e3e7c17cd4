//! The scaffolding itself: a registry on a given address, the proxy's records (client address,
//! ranges, corruption, its own statuses and redirects), the CLI's isolation, mount guards,
//! bounded runs, and the fixture lookup. Needs root (a tmpfs mount) and docker-registry.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dfagent_test_support::cli::Dfagent;
use dfagent_test_support::fixtures::{
    expected_file, expected_files, fixture, list_tree, listing_of, sha256_hex, shared_dir,
    ALL_IMAGES,
};
use dfagent_test_support::mount::MountGuard;
use dfagent_test_support::mountinfo::{entry_at, is_mounted};
use dfagent_test_support::net::free_port;
use dfagent_test_support::process::{run_bounded, wait_exit};
use dfagent_test_support::proxy::{Action, Corrupt, Proxy};
use dfagent_test_support::registry::{answers, Registry};
use dfagent_test_support::tmp_dir;
use dfagent_test_support::wait::{bounded, wait_until};

/// One HTTP/1.1 request on `s` (kept alive); the status, headers and body of the answer.
fn request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
        s.peer_addr().unwrap(),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut tmp = [0u8; 4096];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "connection closed before an answer");
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    // A HEAD answer has the length of the body it does not carry.
    let len: usize = match method {
        "HEAD" => 0,
        _ => headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap()),
    };
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut tmp = vec![0u8; len - body.len()];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "body cut short");
        body.extend_from_slice(&tmp[..n]);
    }
    (status, headers, body)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Push `data` as a blob of repository `test/blob` (start an upload, then one PUT); its digest.
fn push_blob(s: &mut TcpStream, data: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(data));
    let (status, headers, _) = request(s, "POST", "/v2/test/blob/blobs/uploads/", &[], b"");
    assert_eq!(status, 202);
    let location = &headers.iter().find(|(k, _)| k == "location").unwrap().1;
    // An absolute URL through the proxy (the registry builds it from the Host header).
    let path = &location[location.find("/v2/").unwrap()..];
    let (status, _, body) = request(
        s,
        "PUT",
        &format!("{path}&digest={digest}"),
        &[("Content-Type", "application/octet-stream".into())],
        data,
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    digest
}

#[test]
fn registry_on_a_given_address_and_the_proxy_records_everything() {
    // Another loopback address than the default one, as a bridge address would be.
    let addr = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), free_port()));
    let reg = Registry::start_on(addr);
    assert_eq!(reg.addr(), addr);
    assert_eq!(reg.host(), addr.to_string());
    assert!(answers(addr));

    let proxy = Proxy::start(reg.addr(), Corrupt::FirstOfEachRange);
    let mut c = connect(proxy.addr());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = push_blob(&mut c, &data);
    let path = format!("/v2/test/blob/blobs/{digest}");
    let range = [("Range", "bytes=1000-1999".to_string())];
    // Same connection (kept alive): corrupted once, then healed.
    let (status, _, first) = request(&mut c, "GET", &path, &range, b"");
    assert_eq!(status, 206);
    assert_ne!(first, data[1000..2000]);
    let (_, _, second) = request(&mut c, "GET", &path, &range, b"");
    assert_eq!(second, data[1000..2000]);
    proxy.set_corrupt(Corrupt::Always);
    let (_, _, third) = request(&mut c, "GET", &path, &range, b"");
    assert_ne!(third, data[1000..2000]);
    proxy.set_corrupt(Corrupt::Never);
    let (status, _, whole) = request(&mut c, "GET", &path, &[], b"");
    assert_eq!((status, whole.len()), (200, data.len()));
    let (status, headers, _) = request(&mut c, "HEAD", &path, &[], b"");
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-length" && v == &data.len().to_string()));

    let log = proxy.take_log();
    let me = c.local_addr().unwrap();
    assert!(log.iter().all(|s| s.client == me), "{log:#?}");
    assert_eq!(log.len(), 7, "{log:#?}");
    assert_eq!((log[0].method.as_str(), log[0].status), ("POST", 202));
    assert_eq!((log[1].method.as_str(), log[1].status), ("PUT", 201));
    assert!(!log[0].is_blob_get() && !log[1].is_blob_get());
    let gets: Vec<_> = log.iter().filter(|s| s.is_blob_get()).collect();
    assert_eq!(gets.len(), 4);
    assert!(gets[..3]
        .iter()
        .all(|s| s.range == Some((1000, 1999)) && s.status == 206 && s.body_len == 1000));
    let corrupted: Vec<bool> = gets.iter().map(|s| s.corrupted).collect();
    assert_eq!(corrupted, [true, false, true, false]);
    assert_eq!((gets[3].range, gets[3].body_len), (None, data.len() as u64));
    assert_eq!((log[6].method.as_str(), log[6].body_len), ("HEAD", 0));
    assert!(proxy.take_log().is_empty());

    // Dropping the proxy ends the client's connection.
    drop(proxy);
    let mut buf = [0u8; 1];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
}

#[test]
fn the_proxy_answers_statuses_and_redirects_of_its_own() {
    let reg = Registry::start();
    let proxy = Proxy::builder()
        .upstream(reg.addr())
        .policy(|r| match r.path.as_str() {
            "/v2/unavailable" => Action::Status(503),
            p if p.starts_with("/v2/elsewhere/") => Action::Redirect,
            _ => Action::Forward,
        })
        .start();
    let mut c = connect(proxy.addr());
    assert_eq!(request(&mut c, "GET", "/v2/unavailable", &[], b"").0, 503);
    let (status, headers, _) = request(&mut c, "GET", "/v2/elsewhere/x", &[], b"");
    assert_eq!(status, 307);
    let location = format!("http://{}/v2/elsewhere/x", reg.addr());
    assert!(headers
        .iter()
        .any(|(k, v)| k == "location" && *v == location));
    assert_eq!(request(&mut c, "GET", "/v2/", &[], b"").0, 200);
    let statuses: Vec<u16> = proxy.take_log().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 307, 200]);

    let failing = Proxy::failing(502);
    let mut c = connect(failing.addr());
    assert_eq!(request(&mut c, "GET", "/v2/", &[], b"").0, 502);
    assert_eq!(failing.take_log()[0].path, "/v2/");
}

#[test]
fn the_cli_never_reaches_a_daemon_and_ignores_the_callers_environment() {
    let store = tmp_dir("test-support-store-");
    let cli = Dfagent::new("/usr/bin/env").with_store(store.path());
    let out = cli.ok(&[] as &[&str]);
    let env = String::from_utf8(out.stdout).unwrap();
    let dfagent: Vec<&str> = env.lines().filter(|l| l.starts_with("DFAGENT_")).collect();
    let socket = cli.no_daemon_socket();
    assert!(!socket.exists() && !socket.parent().unwrap().exists());
    let mut want = vec![
        format!("DFAGENT_SOCKET={}", socket.display()),
        format!("DFAGENT_STORE={}", store.path().display()),
    ];
    want.sort();
    let mut got: Vec<String> = dfagent.iter().map(|s| s.to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    assert!(!env.lines().any(|l| l.starts_with("RUST_LOG=")));
}

#[test]
fn a_mount_guard_kills_its_processes_and_detaches_the_mount() {
    let dir = tmp_dir("test-support-mount-");
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut guard = MountGuard::new(&mp);
    let c = std::ffi::CString::new(mp.to_str().unwrap()).unwrap();
    // SAFETY: valid C strings; a tmpfs on a directory this test made.
    let r = unsafe {
        libc::mount(
            c"test-support".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
    let e = entry_at(&mp).unwrap();
    assert_eq!(
        (e.fs_type.as_str(), e.source.as_str()),
        ("tmpfs", "test-support")
    );
    let n = guard.adopt(Command::new("sleep").arg("600").spawn().unwrap());
    let pid = guard.child(n).id();
    drop(guard);
    assert!(!is_mounted(&mp));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn runs_and_waits_are_bounded() {
    assert!(wait_until(Duration::from_secs(1), || true));
    assert!(!wait_until(Duration::from_millis(50), || false));
    assert_eq!(bounded("a sum", Duration::from_secs(5), || 2 + 2), 4);
    let out = run_bounded(
        Command::new("sh").args(["-c", "echo out; echo err >&2"]),
        Duration::from_secs(10),
    );
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    assert!(wait_exit(&mut sleeper, Duration::from_millis(50)).is_none());
    dfagent_test_support::process::kill(&mut sleeper);
    let timed_out = std::panic::catch_unwind(|| {
        run_bounded(Command::new("sleep").arg("600"), Duration::from_millis(100))
    });
    assert!(timed_out.is_err());
}

#[test]
fn fixtures_are_found_with_their_listings() {
    assert!(shared_dir().join("tools/list-tree.py").is_file());
    for image in ALL_IMAGES {
        assert!(fixture(image).join("blobs").is_dir());
        assert!(
            !expected_files(image).is_empty(),
            "{image}: {}",
            listing_of(image)
        );
    }
    assert_eq!(expected_file("v6-zstd-blake3", "hello.txt").size, 13);
    let dir = tmp_dir("test-support-tree-");
    std::fs::write(dir.path().join("hello.txt"), b"hello, nydus\n").unwrap();
    let lines = list_tree(dir.path());
    assert_eq!(lines.len(), 2, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(v["path"], "hello.txt");
    assert_eq!(
        v["sha256"],
        expected_file("v6-zstd-blake3", "hello.txt").sha256
    );
}
