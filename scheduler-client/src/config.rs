//! The Dragonfly client's configuration. The node crate maps its `[dragonfly]` section onto this.

use std::time::Duration;

use crate::DragonflyError;

/// `common.v2.Priority` numbers (dragonfly-api `common.proto`), as sent in `X-Dragonfly-Priority`
/// and in `PreheatImageRequest.priority`.
pub mod priority {
    /// LEVEL0: no special meaning for the scheduler.
    pub const LEVEL0: i32 = 0;
    /// LEVEL1: the download is forbidden (never sent by dfagent).
    pub const LEVEL1: i32 = 1;
    /// LEVEL2: first download may not go back to source.
    pub const LEVEL2: i32 = 2;
    /// LEVEL3: first download goes back to source from a normal peer.
    pub const LEVEL3: i32 = 3;
    /// LEVEL4: first download goes back to source from a super seed peer.
    pub const LEVEL4: i32 = 4;
    /// LEVEL5: as LEVEL4, one step lower.
    pub const LEVEL5: i32 = 5;
    /// LEVEL6: as LEVEL4, the highest; dfdaemon's proxy uses it when the header is absent.
    pub const LEVEL6: i32 = 6;
}

/// Configuration of the Dragonfly client (seed peers from the scheduler, the tier, preheat).
#[derive(Clone, Debug)]
pub struct DragonflyConfig {
    /// Scheduler addresses, `host:port` or `http://host:port`; the first reachable one is used.
    pub schedulers: Vec<String>,
    /// How often the scheduler is asked for its seed peers again (`ListHosts`).
    pub refresh_interval: Duration,
    /// How often every seed peer's health is checked.
    pub health_interval: Duration,
    /// Bound on opening a connection (scheduler, seed).
    pub connect_timeout: Duration,
    /// Bound on one request to a seed or the scheduler; a range request gets a second more per
    /// MiB asked for.
    pub request_timeout: Duration,
    /// How long a seed whose bytes failed verification is not asked.
    pub avoid_for_bad_bytes: Duration,
    /// How long a seed that failed a request (network, status, protocol) is not asked.
    pub avoid_for_errors: Duration,
    /// Seeds of the ring tried for one range before leaving it to the next tier.
    pub seeds_per_request: usize,
    /// `X-Dragonfly-Application` (and `application` of preheats).
    pub application: Option<String>,
    /// `X-Dragonfly-Tag` (and `tag` of preheats).
    pub tag: Option<String>,
    /// Priority of on-demand reads ([`priority`] numbers; default LEVEL6, dfdaemon's default).
    pub priority: i32,
    /// Priority of prefetch traffic (default LEVEL5, one below reads): ranges only background
    /// work wants (slots marked [`dfagent_core::Slot::is_background`]), and preheats.
    pub prefetch_priority: i32,
    /// Largest merged range request (default 4 MiB, as the registry tier).
    pub max_range: u64,
}

impl Default for DragonflyConfig {
    fn default() -> Self {
        Self {
            schedulers: Vec::new(),
            refresh_interval: Duration::from_secs(30),
            health_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            avoid_for_bad_bytes: Duration::from_secs(600),
            avoid_for_errors: Duration::from_secs(30),
            seeds_per_request: 2,
            application: None,
            tag: None,
            priority: priority::LEVEL6,
            prefetch_priority: priority::LEVEL5,
            max_range: dfagent_core::ranges::DEFAULT_MAX_MERGE,
        }
    }
}

/// Longest application or tag value.
const MAX_LABEL: usize = 256;

impl DragonflyConfig {
    /// Check the values that would make the client misbehave.
    pub fn validate(&self) -> Result<(), DragonflyError> {
        let bad = |what: &str| Err(DragonflyError::Config(what.to_string()));
        if self.schedulers.is_empty() {
            return bad("no scheduler address");
        }
        for s in &self.schedulers {
            scheduler_uri(s)?;
        }
        for (name, d) in [
            ("refresh_interval", self.refresh_interval),
            ("health_interval", self.health_interval),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(24 * 3600) {
                return bad(&format!("{name} must be between 1 ms and a day"));
            }
        }
        if self.seeds_per_request == 0 || self.seeds_per_request > 16 {
            return bad("seeds_per_request must be 1..=16");
        }
        if self.max_range == 0 || self.max_range > 64 << 20 {
            return bad("max_range must be 1 byte..=64 MiB");
        }
        for p in [self.priority, self.prefetch_priority] {
            if !(priority::LEVEL0..=priority::LEVEL6).contains(&p) || p == priority::LEVEL1 {
                return bad(
                    "priorities must be common.v2.Priority 0 or 2..=6 (1 forbids downloads)",
                );
            }
        }
        for (name, v) in [("application", &self.application), ("tag", &self.tag)] {
            if let Some(v) = v {
                if v.is_empty()
                    || v.len() > MAX_LABEL
                    || !v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                {
                    return bad(&format!(
                        "{name} must be 1..=256 printable ASCII characters"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `http://host:port` for a configured scheduler address (`host:port` gets `http://`).
pub(crate) fn scheduler_uri(addr: &str) -> Result<String, DragonflyError> {
    let addr = addr.trim();
    let uri = if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let parsed: http::Uri = uri.parse().map_err(|_| {
        DragonflyError::Config(format!("scheduler address {addr:?} does not parse"))
    })?;
    if parsed.host().is_none() || parsed.port_u16().is_none() {
        return Err(DragonflyError::Config(format!(
            "scheduler address {addr:?} needs a host and a port"
        )));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let mut c = DragonflyConfig {
            schedulers: vec!["127.0.0.1:8002".into(), "http://sched:8002".into()],
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        assert_eq!(scheduler_uri("a:1").unwrap(), "http://a:1");
        c.schedulers = vec!["no port".into()];
        assert!(c.validate().is_err());
        c.schedulers = vec!["a:1".into()];
        c.priority = 1;
        assert!(c.validate().is_err());
        c.priority = 6;
        c.tag = Some("bad\nvalue".into());
        assert!(c.validate().is_err());
        c.tag = None;
        c.seeds_per_request = 0;
        assert!(c.validate().is_err());
        assert!(DragonflyConfig::default().validate().is_err());
    }
}
