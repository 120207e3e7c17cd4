//! The consistent hash ring of seed peers, built as upstream's request proxy builds it
//! (`dragonfly-client-request` 1.7.4, `hashring.rs` and `selector.rs`): `hashring` 0.3.6 with its
//! default SipHasher (keys 0, 0), [`VNODES_PER_SEED`] virtual nodes per seed, a virtual node
//! hashed as the pair (replica index as `usize`, seed key as a string), the task id hashed as a
//! string, and seeds picked by walking the ring clockwise from the task id, keeping the first
//! distinct seeds. A seed that is unhealthy or avoided is skipped in the walk, which picks what
//! a ring built without it would pick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hashring::HashRing;

/// Virtual nodes per seed (upstream: `DEFAULT_VNODES_PER_HOST`).
pub const VNODES_PER_SEED: usize = 512;
/// Most distinct seeds remembered in order per task id.
const ORDER_LEN: usize = 16;
/// Task ids whose seed order is cached (cleared when full).
const ORDER_CACHE: usize = 4096;

/// A virtual node. Field order and types matter: the derived `Hash` writes the `usize` then the
/// string, as upstream's `VNode { id: usize, name: String }` does (`Arc<str>` hashes as `str`).
#[derive(Clone, Debug, Hash, PartialEq)]
struct VNode {
    id: usize,
    name: Arc<str>,
}

/// A ring over seed keys ([`crate::Seed::ring_key`]).
pub struct SeedRing {
    ring: HashRing<VNode>,
    seeds: usize,
    order: std::sync::Mutex<HashMap<String, Vec<Arc<str>>>>,
}

impl SeedRing {
    /// A ring over `keys` (duplicates ignored).
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut seen = HashSet::new();
        let mut nodes = Vec::new();
        for k in keys {
            if !seen.insert(k) {
                continue;
            }
            let name: Arc<str> = Arc::from(k);
            for id in 0..VNODES_PER_SEED {
                nodes.push(VNode {
                    id,
                    name: name.clone(),
                });
            }
        }
        let mut ring = HashRing::new();
        ring.batch_add(nodes);
        Self {
            ring,
            seeds: seen.len(),
            order: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Number of seeds on the ring.
    pub fn len(&self) -> usize {
        self.seeds
    }

    /// Whether the ring has no seed.
    pub fn is_empty(&self) -> bool {
        self.seeds == 0
    }

    /// The distinct seeds clockwise from `task_id` (at most 16), cached per task id.
    pub fn order(&self, task_id: &str) -> Vec<Arc<str>> {
        if let Ok(cache) = self.order.lock() {
            if let Some(o) = cache.get(task_id) {
                return o.clone();
            }
        }
        let key = task_id.to_string();
        let want = self.seeds.min(ORDER_LEN);
        let mut out: Vec<Arc<str>> = Vec::with_capacity(want);
        // The whole ring, rotated to the task's position (the crate clones it either way).
        if let Some(nodes) = self.ring.get_with_replicas(&key, self.ring.len()) {
            let mut seen: HashSet<Arc<str>> = HashSet::new();
            for v in nodes {
                if out.len() >= want {
                    break;
                }
                if seen.insert(v.name.clone()) {
                    out.push(v.name);
                }
            }
        }
        if let Ok(mut cache) = self.order.lock() {
            if cache.len() >= ORDER_CACHE {
                cache.clear();
            }
            cache.insert(key, out.clone());
        }
        out
    }

    /// The first `n` seeds clockwise from `task_id` for which `usable` holds.
    pub fn select(&self, task_id: &str, n: usize, usable: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        self.order(task_id)
            .into_iter()
            .filter(|k| usable(k))
            .take(n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(i: usize) -> String {
        format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    #[test]
    fn same_task_same_seed_across_instances_and_orders() {
        let a = SeedRing::new(["s1", "s2", "s3"]);
        let b = SeedRing::new(["s3", "s1", "s2", "s1"]);
        assert_eq!(b.len(), 3);
        for i in 0..200 {
            let t = task(i);
            assert_eq!(a.order(&t), b.order(&t), "task {t}");
            assert_eq!(a.order(&t).len(), 3);
        }
    }

    #[test]
    fn spread_and_minimal_movement() {
        let keys: Vec<String> = (0..4).map(|i| format!("seed-{i}")).collect();
        let full = SeedRing::new(keys.iter().map(String::as_str));
        let without = SeedRing::new(keys.iter().skip(1).map(String::as_str));
        let mut per_seed: HashMap<Arc<str>, usize> = HashMap::new();
        let n = 2000;
        for i in 0..n {
            let t = task(i);
            let first = full.select(&t, 1, |_| true)[0].clone();
            *per_seed.entry(first.clone()).or_default() += 1;
            let after = without.select(&t, 1, |_| true)[0].clone();
            if &*first != "seed-0" {
                // Keys of the other seeds do not move.
                assert_eq!(first, after, "task {t} moved");
            } else {
                // seed-0's keys go to the next seed clockwise, as skipping it in the walk says.
                assert_eq!(full.select(&t, 1, |k| k != "seed-0")[0], after);
            }
        }
        assert_eq!(per_seed.len(), 4);
        for (seed, count) in per_seed {
            // 512 virtual nodes per seed: each gets a fair share (25% +- 10 points).
            assert!((300..=700).contains(&count), "{seed}: {count} of {n}");
        }
    }

    #[test]
    fn hashes_as_upstream_vnode() {
        // The derived Hash of (usize, Arc<str>) equals that of upstream's (usize, String).
        #[derive(Hash)]
        struct Upstream {
            id: usize,
            name: String,
        }
        use std::hash::BuildHasher;
        let b = hashring::DefaultHashBuilder;
        let ours = VNode {
            id: 7,
            name: Arc::from("default-pod-1"),
        };
        let theirs = Upstream {
            id: 7,
            name: "default-pod-1".into(),
        };
        assert_eq!(b.hash_one(&ours), b.hash_one(&theirs));
        assert_eq!(b.hash_one("abc"), b.hash_one("abc".to_string()));
    }

    #[test]
    fn empty_ring() {
        let r = SeedRing::new([]);
        assert!(r.is_empty());
        assert!(r.select("t", 2, |_| true).is_empty());
    }
}
