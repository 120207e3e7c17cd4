//! Requests of the control API, checked: what a daemon may act on. Every string that becomes a
//! path or a reference is bounded; paths must be absolute and free of NUL; enum values must be
//! known. Failures are [`Invalid`], which the server answers with `INVALID_ARGUMENT`.

use std::path::PathBuf;

use crate::proto;

/// Largest control request a server accepts (they are a few hundred bytes).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Longest path accepted.
pub const MAX_PATH: usize = 4096;
/// Longest image reference accepted.
pub const MAX_REFERENCE: usize = 1024;
/// Largest read-ahead window a request may ask for, in MiB.
pub const MAX_READAHEAD_MIB: u32 = 1024;

/// Why a request cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Which image a mount request names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// A registry reference.
    Registry(String),
    /// A local bootstrap and its blob directory (absolute paths).
    Local {
        /// The bootstrap.
        bootstrap: PathBuf,
        /// The blob directory.
        blob_dir: PathBuf,
    },
}

/// Background prefetch a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// Nothing.
    None,
    /// The image's prefetch table.
    Table,
    /// The table, then the whole image.
    All,
}

/// The per-mount options a request sets; `None` leaves the daemon's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountChoices {
    /// Background prefetch.
    pub prefetch: Option<Prefetch>,
    /// Read-ahead window, MiB.
    pub readahead_mib: Option<u32>,
    /// Replace a dfagent mount at the mount point.
    pub force: bool,
    /// Let other users use the mount (FUSE `allow_other`); `false` leaves the daemon's default.
    pub allow_other: bool,
    /// Honour set-user-id bits; `false` leaves the daemon's default.
    pub suid: bool,
    /// Honour device files; `false` leaves the daemon's default.
    pub dev: bool,
    /// Mount a container's root file system (suid, dev, allow_other, under a root-only
    /// directory).
    pub container_rootfs: bool,
}

/// A checked mount request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where (absolute).
    pub mountpoint: PathBuf,
    /// What.
    pub image: Image,
    /// How.
    pub choices: MountChoices,
}

/// `p` as an absolute path, or why not; `what` names it in the message.
pub fn path(what: &str, p: &str) -> Result<PathBuf, Invalid> {
    if p.is_empty() {
        return Err(Invalid(format!("{what} is empty")));
    }
    if p.len() > MAX_PATH || p.contains('\0') {
        return Err(Invalid(format!("{what} is not a usable path")));
    }
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(Invalid(format!("{what} {p:?} is not absolute")));
    }
    Ok(path)
}

/// `r` as an image reference, or why not (the registry client parses it fully).
pub fn reference(r: &str) -> Result<&str, Invalid> {
    if r.is_empty() || r.len() > MAX_REFERENCE || r.contains(char::is_control) {
        return Err(Invalid(
            "image reference is empty, too long or has control characters".into(),
        ));
    }
    Ok(r)
}

/// The options of a mount request.
pub fn choices(o: Option<&proto::MountOptions>) -> Result<MountChoices, Invalid> {
    let Some(o) = o else {
        return Ok(MountChoices::default());
    };
    let prefetch = match proto::Prefetch::try_from(o.prefetch) {
        Ok(proto::Prefetch::Unspecified) => None,
        Ok(proto::Prefetch::None) => Some(Prefetch::None),
        Ok(proto::Prefetch::Table) => Some(Prefetch::Table),
        Ok(proto::Prefetch::All) => Some(Prefetch::All),
        Err(_) => {
            return Err(Invalid(format!("unknown prefetch policy {}", o.prefetch)));
        }
    };
    if let Some(m) = o.readahead_mib.filter(|m| *m > MAX_READAHEAD_MIB) {
        return Err(Invalid(format!(
            "read-ahead of {m} MiB is beyond the {MAX_READAHEAD_MIB} MiB limit"
        )));
    }
    Ok(MountChoices {
        prefetch,
        readahead_mib: o.readahead_mib,
        force: o.force,
        allow_other: o.allow_other,
        suid: o.suid,
        dev: o.dev,
        container_rootfs: o.container_rootfs,
    })
}

/// A mount request, checked.
pub fn mount(r: &proto::MountRequest) -> Result<Mount, Invalid> {
    let mountpoint = path("mount point", &r.mountpoint)?;
    let image = match &r.image {
        Some(proto::mount_request::Image::Registry(i)) => {
            Image::Registry(reference(&i.reference)?.to_string())
        }
        Some(proto::mount_request::Image::Local(l)) => Image::Local {
            bootstrap: path("bootstrap", &l.bootstrap)?,
            blob_dir: path("blob directory", &l.blob_dir)?,
        },
        None => return Err(Invalid("no image given".into())),
    };
    Ok(Mount {
        mountpoint,
        image,
        choices: choices(r.options.as_ref())?,
    })
}

/// An unmount request, checked: the mount point and whether to detach lazily.
pub fn umount(r: &proto::UmountRequest) -> Result<(PathBuf, bool), Invalid> {
    Ok((path("mount point", &r.mountpoint)?, r.lazy))
}

/// A pull request, checked: the reference.
pub fn pull(r: &proto::PullRequest) -> Result<&str, Invalid> {
    reference(&r.reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(mp: &str, image: Option<proto::mount_request::Image>) -> proto::MountRequest {
        proto::MountRequest {
            mountpoint: mp.into(),
            image,
            options: None,
        }
    }

    fn registry(r: &str) -> Option<proto::mount_request::Image> {
        Some(proto::mount_request::Image::Registry(
            proto::RegistryImage {
                reference: r.into(),
            },
        ))
    }

    #[test]
    fn good_requests_pass() {
        let m = mount(&req("/mnt/a", registry("localhost:5000/a:v1"))).unwrap();
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/a"));
        assert_eq!(m.image, Image::Registry("localhost:5000/a:v1".into()));
        assert_eq!(m.choices, MountChoices::default());
        let mut r = req("/mnt/a", registry("x/y:z"));
        r.options = Some(proto::MountOptions {
            prefetch: proto::Prefetch::Table as i32,
            readahead_mib: Some(4),
            force: true,
            allow_other: true,
            container_rootfs: true,
            ..Default::default()
        });
        let c = mount(&r).unwrap().choices;
        assert_eq!(c.prefetch, Some(Prefetch::Table));
        assert_eq!(c.readahead_mib, Some(4));
        assert!(c.force && c.allow_other && c.container_rootfs);
        assert!(!c.suid && !c.dev);
        r.options = Some(proto::MountOptions {
            suid: true,
            dev: true,
            ..Default::default()
        });
        let c = mount(&r).unwrap().choices;
        assert!(c.suid && c.dev && !c.allow_other && !c.force);
    }

    #[test]
    fn bad_requests_say_why() {
        let bad = |r: &proto::MountRequest, needle: &str| {
            let e = mount(r).unwrap_err();
            assert!(e.0.contains(needle), "{e}");
        };
        bad(&req("", registry("a")), "empty");
        bad(&req("rel/ative", registry("a")), "not absolute");
        bad(&req("/a\0b", registry("a")), "not a usable path");
        bad(
            &req(&format!("/{}", "a".repeat(MAX_PATH)), registry("a")),
            "usable",
        );
        bad(&req("/mnt", None), "no image");
        bad(&req("/mnt", registry("")), "reference");
        bad(
            &req("/mnt", registry(&"a".repeat(MAX_REFERENCE + 1))),
            "reference",
        );
        bad(&req("/mnt", registry("a\nb")), "control");
        let mut r = req("/mnt", registry("a"));
        r.options = Some(proto::MountOptions {
            prefetch: 99,
            ..Default::default()
        });
        bad(&r, "unknown prefetch");
        r.options = Some(proto::MountOptions {
            readahead_mib: Some(MAX_READAHEAD_MIB + 1),
            ..Default::default()
        });
        bad(&r, "beyond");
        let l = Some(proto::mount_request::Image::Local(proto::LocalImage {
            bootstrap: "boot".into(),
            blob_dir: "/b".into(),
        }));
        bad(&req("/mnt", l), "bootstrap");
        assert!(umount(&proto::UmountRequest {
            mountpoint: "x".into(),
            lazy: false
        })
        .is_err());
        assert!(pull(&proto::PullRequest {
            reference: String::new()
        })
        .is_err());
    }
}
