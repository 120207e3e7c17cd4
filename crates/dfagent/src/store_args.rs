//! Command-line options shared by every command that uses the node's chunk store.

use std::path::PathBuf;

use anyhow::Context;
use dfagent_store::{Store, StoreConfig};

/// Where the chunk store lives and how big it may grow.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// Directory of the node's chunk store (RocksDB).
    #[arg(long, env = "DFAGENT_STORE", default_value = "/var/lib/dfagent/store")]
    pub store: PathBuf,
    /// Most chunk data the store keeps (e.g. 500M, 20G); least recently used chunks are evicted,
    /// chunks of mounted images last.
    #[arg(long, default_value = "10G", value_parser = parse_size)]
    pub cache_capacity: u64,
    /// Never evict chunks of pinned (mounted or pulled) images; fail to store new chunks instead.
    #[arg(long)]
    pub never_evict_pinned: bool,
}

impl StoreArgs {
    /// Open the store, naming the owner if another process holds it.
    pub fn open(&self) -> anyhow::Result<Store> {
        Store::open(
            &self.store,
            StoreConfig {
                capacity: self.cache_capacity,
                evict_pinned: !self.never_evict_pinned,
                ..StoreConfig::default()
            },
        )
        .with_context(|| format!("opening the chunk store {}", self.store.display()))
    }
}

/// Parse `123`, `64K`, `500M`, `20G`, `1T` (powers of 1024; an optional trailing `B`/`iB`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use a number with an optional K, M, G or T"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123").unwrap(), 123);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
