//! The snapshotter's metadata: every snapshot's name, parent, kind, labels and directory, kept in
//! one JSON file that is replaced atomically (written beside, synced, renamed, directory synced)
//! on every change, so a kill -9 leaves either the old or the new table, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Result, SnapshotterError};

/// The table file's name under the snapshotter's root.
pub const TABLE: &str = "metadata.json";
/// Largest table file read back (a node holds thousands of snapshots at most).
const MAX_TABLE_BYTES: u64 = 256 << 20;

/// What a snapshot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Writable, not yet committed (a container's, or a layer being unpacked).
    Active,
    /// Read-only view of a parent.
    View,
    /// Committed: immutable, may be a parent.
    Committed,
}

impl Kind {
    /// containerd's name of the kind (what filters compare).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Active => "active",
            Kind::View => "view",
            Kind::Committed => "committed",
        }
    }
}

/// A layer served from an image mount instead of a directory: a Nydus data or bootstrap layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// The image, `repository@manifest-digest`, mounted as every container's lower directory.
    pub image: String,
    /// Whether this is the image's bootstrap layer (the top of a Nydus image's chain).
    pub bootstrap: bool,
}

/// One snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Directory number: `snapshots/<id>`.
    pub id: u64,
    /// Parent's name, if any.
    pub parent: Option<String>,
    /// Kind.
    pub kind: Kind,
    /// Creation time, nanoseconds since the epoch.
    pub created: i64,
    /// Last update, nanoseconds since the epoch.
    pub updated: i64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Set for a Nydus layer (no directory of its own).
    pub remote: Option<Remote>,
    /// Disk usage `(bytes, inodes)` recorded at commit (committed snapshots only).
    pub usage: Option<(i64, i64)>,
}

/// The whole table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Table {
    /// Next directory number.
    pub next_id: u64,
    /// Snapshots by name (a committed snapshot's name, an active or view snapshot's key).
    pub snapshots: BTreeMap<String, Snapshot>,
}

/// Now, in nanoseconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Table {
    /// Read the table under `root`; an empty one if there is none yet.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join(TABLE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(SnapshotterError::io(
                    format!("opening {}", path.display()),
                    e,
                ))
            }
        };
        let len = file
            .metadata()
            .map_err(|e| SnapshotterError::io(format!("reading {}", path.display()), e))?
            .len();
        if len > MAX_TABLE_BYTES {
            return Err(SnapshotterError::Corrupt {
                path,
                detail: format!("{len} bytes (at most {MAX_TABLE_BYTES})"),
            });
        }
        let t: Table = serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
            SnapshotterError::Corrupt {
                path: path.clone(),
                detail: e.to_string(),
            }
        })?;
        t.check()
            .map_err(|detail| SnapshotterError::Corrupt { path, detail })?;
        Ok(t)
    }

    /// What the layers above may rely on: every parent exists and is committed, ids are unique
    /// and below `next_id`, chains end (no cycles).
    fn check(&self) -> std::result::Result<(), String> {
        let mut ids = std::collections::HashSet::new();
        for (name, s) in &self.snapshots {
            if s.id >= self.next_id || !ids.insert(s.id) {
                return Err(format!(
                    "snapshot {name:?} has a bad directory number {}",
                    s.id
                ));
            }
            if let Some(p) = &s.parent {
                match self.snapshots.get(p) {
                    Some(ps) if ps.kind == Kind::Committed => {}
                    _ => return Err(format!("snapshot {name:?} has a bad parent {p:?}")),
                }
            }
        }
        for name in self.snapshots.keys() {
            self.chain(name)
                .ok_or_else(|| format!("snapshot {name:?}: its parents loop"))?;
        }
        Ok(())
    }

    /// `name` and its ancestors, nearest first; `None` if they loop (bounded by the table's
    /// size).
    pub fn chain(&self, name: &str) -> Option<Vec<(&str, &Snapshot)>> {
        let mut out = Vec::new();
        let mut cur = Some(name);
        while let Some(n) = cur {
            if out.len() > self.snapshots.len() {
                return None;
            }
            let Some((k, s)) = self.snapshots.get_key_value(n) else {
                break;
            };
            out.push((k.as_str(), s));
            cur = s.parent.as_deref();
        }
        Some(out)
    }

    /// Write the table under `root`, replacing the old one atomically.
    pub fn save(&self, root: &Path) -> Result<()> {
        let path = root.join(TABLE);
        let tmp: PathBuf = root.join(format!("{TABLE}.tmp"));
        let bytes = serde_json::to_vec(self).map_err(|e| {
            SnapshotterError::io("encoding the snapshot table", std::io::Error::other(e))
        })?;
        let io = |what: &str, e| SnapshotterError::io(format!("{what} {}", tmp.display()), e);
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&bytes).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        std::fs::File::open(root)
            .and_then(|d| d.sync_all())
            .map_err(|e| SnapshotterError::io(format!("syncing {}", root.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u64, parent: Option<&str>, kind: Kind) -> Snapshot {
        Snapshot {
            id,
            parent: parent.map(str::to_string),
            kind,
            created: 1,
            updated: 1,
            labels: BTreeMap::new(),
            remote: None,
            usage: None,
        }
    }

    #[test]
    fn a_table_survives_a_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Table::load(dir.path()).unwrap().snapshots.is_empty());
        let mut t = Table {
            next_id: 3,
            ..Default::default()
        };
        t.snapshots
            .insert("a".into(), snap(1, None, Kind::Committed));
        t.snapshots
            .insert("b".into(), snap(2, Some("a"), Kind::Active));
        t.save(dir.path()).unwrap();
        let back = Table::load(dir.path()).unwrap();
        assert_eq!(back.snapshots, t.snapshots);
        assert_eq!(back.chain("b").unwrap().len(), 2);

        for (bad, what) in [
            (r#"{"next_id":1,"snapshots":{"a":{"id":1"#, "EOF"),
            ("[]", "invalid length"),
            ("7", "invalid type"),
        ] {
            std::fs::write(dir.path().join(TABLE), bad).unwrap();
            let e = Table::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let mut loop_ = t.clone();
        loop_.snapshots.get_mut("a").unwrap().parent = Some("b".into());
        loop_.snapshots.get_mut("b").unwrap().kind = Kind::Committed;
        loop_.save(dir.path()).unwrap();
        assert!(Table::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("loop"));
        let mut dup = t.clone();
        dup.snapshots.get_mut("b").unwrap().id = 1;
        dup.save(dir.path()).unwrap();
        assert!(Table::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("directory"));
        let mut active_parent = t.clone();
        active_parent
            .snapshots
            .insert("c".into(), snap(0, Some("b"), Kind::View));
        active_parent.save(dir.path()).unwrap();
        assert!(Table::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("parent"));
    }
}
