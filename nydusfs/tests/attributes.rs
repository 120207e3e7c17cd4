//! Attributes as the kernel shows them: xattrs, hard links, device numbers, statfs, and the
//! refusal of every write.

pub mod common;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::{inode_at, TestMount};
use dfagent_test_support::fixtures::{expected_file, expected_lines, sha256_hex};
use dfagent_test_support::mountinfo::entry_at;
use dfagent_test_support::wait::bounded;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Names of the xattrs of `p` (not following symlinks).
fn listxattr(p: &Path) -> io::Result<Vec<Vec<u8>>> {
    let c = cpath(p);
    // SAFETY: a size query with a null buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; n as usize];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// Value of xattr `name` of `p`, read into a buffer of `cap` bytes (`None`: ask for the size
/// first).
fn getxattr(p: &Path, name: &str, cap: Option<usize>) -> io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    let cap = match cap {
        Some(c) => c,
        None => {
            // SAFETY: a size query with a null buffer.
            let s = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
            if s < 0 {
                return Err(io::Error::last_os_error());
            }
            s as usize
        }
    };
    let mut buf = vec![0u8; cap];
    // SAFETY: `buf` has room for `buf.len()` bytes.
    let s = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(s as usize);
    Ok(buf)
}

fn errno_of<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    r.expect_err("the operation succeeded")
        .raw_os_error()
        .unwrap()
}

#[test]
fn xattrs_match_the_image() {
    let m = TestMount::fixture("v6-zstd-blake3");
    let root = m.path().to_path_buf();
    let image = m.image.clone();
    bounded("xattr checks", Duration::from_secs(20), move || {
        let p = root.join("xattr.txt");
        let mut names = listxattr(&p).unwrap();
        names.sort();
        let inode = inode_at(&image, "xattr.txt");
        let mut want: Vec<_> = image.xattrs(inode.nid).unwrap();
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            names,
            want.iter().map(|x| x.name.clone()).collect::<Vec<_>>(),
            "listxattr differs from the image"
        );
        let user: Vec<_> = names
            .iter()
            .filter(|n| n.starts_with(b"user."))
            .cloned()
            .collect();
        assert_eq!(
            user,
            [&b"user.binary"[..], b"user.empty", b"user.mime_type"],
            "user xattrs of xattr.txt"
        );
        for x in &want {
            let name = std::str::from_utf8(&x.name).unwrap();
            assert_eq!(
                getxattr(&p, name, None).unwrap(),
                x.value,
                "value of {name}"
            );
        }
        assert_eq!(getxattr(&p, "user.mime_type", None).unwrap(), b"text/plain");
        assert_eq!(getxattr(&p, "user.empty", None).unwrap(), b"");
        let binary = getxattr(&p, "user.binary", None).unwrap();
        assert_eq!(binary.len(), 256);
        assert!(
            binary.iter().enumerate().all(|(i, &b)| b == i as u8),
            "{binary:?}"
        );

        // The listing's hex values agree.
        let line = expected_lines("v6-zstd-blake3")
            .into_iter()
            .find(|l| l.contains("\"path\": \"xattr.txt\""))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for (k, hexval) in v["xattrs"].as_object().unwrap() {
            assert_eq!(
                hex::encode(getxattr(&p, k, None).unwrap()),
                hexval.as_str().unwrap(),
                "{k}"
            );
        }

        // Errors: an absent name, a buffer too small.
        assert_eq!(errno_of(getxattr(&p, "user.absent", None)), libc::ENODATA);
        assert_eq!(
            errno_of(getxattr(&p, "user.mime_type", Some(3))),
            libc::ERANGE
        );

        // A directory's xattr; a file without any.
        assert_eq!(
            getxattr(&root.join("many"), "user.dir", None).unwrap(),
            b"dir xattr"
        );
        assert!(listxattr(&root.join("hello.txt")).unwrap().is_empty());
        // Symlinks answer for themselves (llistxattr does not follow).
        assert!(listxattr(&root.join("link-rel")).unwrap().is_empty());
    });
    m.unmount();
}

#[test]
fn hard_links_devices_and_modes() {
    let m = TestMount::fixture("v6-zstd-blake3");
    let root = m.path().to_path_buf();
    bounded("attribute checks", Duration::from_secs(20), move || {
        for (a, b) in [
            ("hello.txt", "hardlink-to-hello"),
            ("multi-chunk.bin", "bin/hardlink-multi"),
        ] {
            let (ma, mb) = (
                std::fs::symlink_metadata(root.join(a)).unwrap(),
                std::fs::symlink_metadata(root.join(b)).unwrap(),
            );
            assert_eq!(ma.ino(), mb.ino(), "{a} and {b} are hard links");
            assert_eq!((ma.nlink(), mb.nlink()), (2, 2), "nlink of {a} and {b}");
            assert_eq!(ma.dev(), mb.dev());
        }
        let other = std::fs::symlink_metadata(root.join("xattr.txt")).unwrap();
        assert_eq!(other.nlink(), 1);
        assert_ne!(
            other.ino(),
            std::fs::symlink_metadata(root.join("hello.txt"))
                .unwrap()
                .ino()
        );

        let c = std::fs::symlink_metadata(root.join("chardev")).unwrap();
        assert!(c.file_type().is_char_device());
        assert_eq!((libc::major(c.rdev()), libc::minor(c.rdev())), (1, 3));
        let b = std::fs::symlink_metadata(root.join("blockdev")).unwrap();
        assert!(b.file_type().is_block_device());
        assert_eq!((libc::major(b.rdev()), libc::minor(b.rdev())), (7, 0));
        assert!(std::fs::symlink_metadata(root.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());

        assert_eq!(
            std::fs::symlink_metadata(root.join("bin/setuid"))
                .unwrap()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            std::fs::symlink_metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );
        let owned = std::fs::symlink_metadata(root.join("owned/by-1000")).unwrap();
        assert_eq!((owned.uid(), owned.gid()), (1000, 1000));
        assert_eq!(
            std::fs::read_link(root.join("link-long-target"))
                .unwrap()
                .as_os_str()
                .len(),
            1000
        );
        assert_eq!(
            std::fs::read_to_string(root.join("link-rel")).unwrap(),
            std::fs::read_to_string(root.join("hello.txt")).unwrap()
        );
        // The root is inode 1, as the kernel expects of a FUSE root.
        assert_eq!(std::fs::metadata(&root).unwrap().ino(), 1);
    });
    m.unmount();
}

#[test]
fn statfs_answers() {
    let m = TestMount::fixture("v6-zstd-blake3");
    let c = cpath(m.path());
    // SAFETY: plain out-parameter structs, zeroed then filled by the kernel.
    let (sv, sf) = unsafe {
        let mut sv: libc::statvfs = std::mem::zeroed();
        let mut sf: libc::statfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c.as_ptr(), &mut sv),
            0,
            "{}",
            io::Error::last_os_error()
        );
        assert_eq!(
            libc::statfs(c.as_ptr(), &mut sf),
            0,
            "{}",
            io::Error::last_os_error()
        );
        (sv, sf)
    };
    assert_eq!(sf.f_type, 0x6573_5546, "FUSE_SUPER_MAGIC");
    assert_ne!(
        sv.f_flag & libc::ST_RDONLY,
        0,
        "not read-only: {:#x}",
        sv.f_flag
    );
    assert_eq!(sv.f_bsize, 4096);
    assert_eq!(sv.f_namemax, 255);
    assert!(sv.f_blocks > 0);
    assert_eq!(sv.f_bfree, 0);
    assert_eq!(sv.f_bavail, 0);
    assert_eq!(sv.f_files, m.image.superblock().inodes);
    // mountinfo: "... MOUNT-OPTIONS [optional fields] - FSTYPE SOURCE SUPER-OPTIONS".
    let entry = entry_at(m.path()).unwrap();
    let line = &entry.line;
    assert!(entry.has_option("ro"), "{line}");
    // fuser's direct mount (as root) does not pass the subtype: "fuse", or "fuse.nydus"
    // through fusermount3.
    assert!(
        entry.fs_type == "fuse" || entry.fs_type == "fuse.nydus",
        "{line}"
    );
    assert_eq!(entry.source, "nydusfs-test:v6-zstd-blake3", "{line}");
    m.unmount();
}

#[test]
fn writes_fail_with_erofs() {
    let m = TestMount::fixture("v6-zstd-blake3");
    let root = m.path().to_path_buf();
    bounded("write attempts", Duration::from_secs(20), move || {
        use std::fs::OpenOptions;
        let hello = root.join("hello.txt");
        let attempts: Vec<(&str, io::Result<()>)> = vec![
            (
                "open for writing",
                OpenOptions::new().write(true).open(&hello).map(drop),
            ),
            (
                "open read-write",
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&hello)
                    .map(drop),
            ),
            (
                "truncate",
                OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&hello)
                    .map(drop),
            ),
            (
                "create",
                std::fs::File::create(root.join("new-file")).map(drop),
            ),
            (
                "create in a sticky dir",
                std::fs::File::create(root.join("tmp/x")).map(drop),
            ),
            ("mkdir", std::fs::create_dir(root.join("new-dir"))),
            ("unlink", std::fs::remove_file(&hello)),
            ("rmdir", std::fs::remove_dir(root.join("tmp"))),
            ("rename", std::fs::rename(&hello, root.join("renamed"))),
            (
                "hard link",
                std::fs::hard_link(&hello, root.join("another-link")),
            ),
            (
                "symlink",
                std::os::unix::fs::symlink("hello.txt", root.join("new-link")),
            ),
            (
                "chmod",
                std::fs::set_permissions(
                    &hello,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                ),
            ),
            ("setxattr", {
                let (p, n) = (cpath(&hello), CString::new("user.new").unwrap());
                // SAFETY: valid C strings and a 1-byte value.
                let r =
                    unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }),
            ("access(W_OK)", {
                let p = cpath(&hello);
                // SAFETY: a valid C string.
                let r = unsafe { libc::access(p.as_ptr(), libc::W_OK) };
                if r == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }),
        ];
        for (what, r) in attempts {
            match r {
                Ok(()) => panic!("{what} on the read-only mount succeeded"),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}"),
            }
        }
        // Nothing changed.
        assert_eq!(
            sha256_hex(&std::fs::read(&hello).unwrap()),
            expected_file("v6-zstd-blake3", "hello.txt").sha256
        );
        assert!(!root.join("new-file").exists());
    });
    m.unmount();
}
