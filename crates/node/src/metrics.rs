//! Prometheus metrics of a daemon (`/metrics`, with `/healthz` and `/readyz` beside it). The
//! subsystems keep plain atomic counters; this module reads them at scrape time and names them.
//! No label takes per-chunk, per-file or per-image values: `tier`, `kind`, `op` and `state` come
//! from small fixed sets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dfagent_core::TierErrorKind;
use dfagent_resolver::TIER_LATENCY_BUCKETS_US;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::daemon::Daemon;
use crate::error::{NodeError, Result};

/// Reads the daemon's counters at scrape time.
#[derive(Debug)]
struct Collector {
    daemon: Arc<Daemon>,
}

type Labels = Vec<(&'static str, String)>;

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// Cumulative `(upper bound in seconds, count)` buckets, the sum and the count of a histogram
/// kept as per-bucket counts with bounds in µs (the last bucket open).
fn histogram(bounds_us: &[u64], counts: &[u64], sum_us: u64) -> (Vec<(f64, u64)>, f64, u64) {
    let mut acc = 0;
    let mut buckets = Vec::with_capacity(counts.len());
    for (i, c) in counts.iter().enumerate() {
        acc += c;
        let bound = bounds_us
            .get(i)
            .map(|us| *us as f64 / 1e6)
            .unwrap_or(f64::INFINITY);
        buckets.push((bound, acc));
    }
    (buckets, sum_us as f64 / 1e6, acc)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let node = self.daemon.node();
        let stats = node.resolver_core().stats();
        let tier_rows = |f: fn(&dfagent_resolver::TierStats) -> u64| -> Vec<(Labels, u64)> {
            stats
                .tiers
                .iter()
                .map(|t| (vec![("tier", t.name.clone())], f(t)))
                .collect()
        };
        counter_family(
            &mut enc,
            "dfagent_tier_requests",
            "Requests (batches of chunks) sent to a tier",
            &tier_rows(|t| t.requests),
        )?;
        counter_family(
            &mut enc,
            "dfagent_tier_chunks",
            "Verified chunks a tier delivered",
            &tier_rows(|t| t.chunks),
        )?;
        counter_family(
            &mut enc,
            "dfagent_tier_bytes",
            "Stored bytes of the verified chunks a tier delivered",
            &tier_rows(|t| t.bytes),
        )?;
        counter_family(
            &mut enc,
            "dfagent_verify_failures",
            "Chunks a tier sent that failed verification",
            &tier_rows(|t| t.verify_failures),
        )?;
        let mut errors = Vec::new();
        for t in &stats.tiers {
            for k in TierErrorKind::ALL {
                let n = t
                    .errors_by_kind
                    .iter()
                    .find(|(kind, _)| *kind == k)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                errors.push((
                    vec![("tier", t.name.clone()), ("kind", k.as_str().to_string())],
                    n,
                ));
            }
        }
        counter_family(
            &mut enc,
            "dfagent_tier_errors",
            "Chunks a tier failed to get, by kind of failure",
            &errors,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "dfagent_tier_request_duration",
                "Time a tier took to answer a request",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for t in &stats.tiers {
                let (buckets, sum, count) =
                    histogram(&TIER_LATENCY_BUCKETS_US, &t.latency_buckets, t.latency_us);
                let labels: Labels = vec![("tier", t.name.clone())];
                m.encode_family(&labels)?
                    .encode_histogram::<Labels>(sum, count, &buckets, None)?;
            }
        }
        counter(
            &mut enc,
            "dfagent_cache_hits",
            "Chunks read from the in-memory cache of decoded chunks",
            stats.cache_hits,
        )?;
        counter(
            &mut enc,
            "dfagent_cache_misses",
            "Chunks not in the in-memory cache (fetched or awaited)",
            stats.cache_misses,
        )?;
        counter(
            &mut enc,
            "dfagent_store_writes_dropped",
            "Verified chunks not written to the store because its write-back queue was full",
            stats.writes_dropped,
        )?;
        if let Some(store) = node.store() {
            let s = store.stats();
            gauge(
                &mut enc,
                "dfagent_store_bytes",
                "Bytes of chunk data in the store",
                s.bytes as i64,
            )?;
            gauge(
                &mut enc,
                "dfagent_store_chunks",
                "Chunks in the store",
                s.chunks as i64,
            )?;
            gauge(
                &mut enc,
                "dfagent_store_capacity_bytes",
                "Capacity of the store",
                s.capacity as i64,
            )?;
            counter(
                &mut enc,
                "dfagent_store_evictions",
                "Chunks evicted from the store to make room",
                s.evictions,
            )?;
        }
        if let Some(peer) = node.peer() {
            encode_peer(&mut enc, &peer.counters())?;
        }
        if let Some(dragonfly) = node.dragonfly() {
            encode_dragonfly(&mut enc, &dragonfly.counters())?;
        }
        let fs = self.daemon.fs_totals();
        counter_family(
            &mut enc,
            "dfagent_fuse_requests",
            "FUSE requests answered, by operation",
            &fs.ops
                .iter()
                .map(|(op, n)| (vec![("op", op.to_string())], *n))
                .collect::<Vec<_>>(),
        )?;
        {
            let m = enc.encode_descriptor(
                "dfagent_fuse_read_duration",
                "Time a FUSE read took, from request to reply",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            let (buckets, sum, count) = histogram(
                &dfagent_nydusfs::LATENCY_BUCKETS_US,
                &fs.read_latency,
                fs.read_latency_sum_us,
            );
            let mut m = m;
            m.encode_histogram::<Labels>(sum, count, &buckets, None)?;
        }
        let (serving, unmounting) = self.daemon.mount_states();
        {
            let mut m = enc.encode_descriptor(
                "dfagent_mounts",
                "Mounts the daemon serves, by state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in [("serving", serving), ("unmounting", unmounting)] {
                let labels: Labels = vec![("state", state.to_string())];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut enc,
            "dfagent_prefetch_bytes",
            "Stored bytes of chunks background prefetch verified",
            self.daemon.prefetch_bytes_total(),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "dfagent_build_info",
                "Version of the running dfagent",
                None,
                MetricType::Gauge,
            )?;
            let labels: Labels = vec![("version", env!("CARGO_PKG_VERSION").to_string())];
            ConstGauge::new(1).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The Dragonfly client's families (bytes and chunks fetched through seed peers, and their
/// verification failures, are the `tier="dragonfly"` rows of the tier families).
fn encode_dragonfly(
    enc: &mut DescriptorEncoder,
    c: &dfagent_scheduler_client::CountersSnapshot,
) -> std::fmt::Result {
    gauge_family(
        enc,
        "dfagent_dragonfly_seeds",
        "Dragonfly seed peers the scheduler listed (known) and those whose last health check passed (healthy)",
        &[
            (vec![("state", "known".to_string())], c.seeds_known as i64),
            (vec![("state", "healthy".to_string())], c.seeds_healthy as i64),
        ],
    )?;
    counter(
        enc,
        "dfagent_dragonfly_requests",
        "Range requests sent through Dragonfly seed peers",
        c.requests,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_seed_avoidances",
        "Times a seed peer was set aside (bytes that failed verification, or a failed request)",
        c.avoidances,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_scheduler_refreshes",
        "Seed peer lists fetched from the scheduler",
        c.refreshes,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_scheduler_failures",
        "Rounds in which no scheduler answered",
        c.refresh_failures,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_hosts_rejected",
        "Hosts of the scheduler's answers rejected by validation",
        c.hosts_rejected,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_health_failures",
        "Seed peer health checks that failed",
        c.health_failures,
    )?;
    counter(
        enc,
        "dfagent_dragonfly_credentials_refused",
        "Registry 401s relayed by a seed peer (credentials renewed)",
        c.credentials_refused,
    )?;
    counter_family(
        enc,
        "dfagent_dragonfly_errors",
        "Range requests through seed peers that failed, by kind",
        &c.errors
            .iter()
            .map(|(k, n)| (vec![("kind", k.as_str().to_string())], *n))
            .collect::<Vec<_>>(),
    )
}

/// The peer network's families (bytes and chunks fetched from peers are the `tier="peer"` rows
/// of the tier families).
fn encode_peer(enc: &mut DescriptorEncoder, c: &dfagent_peer::PeerCounters) -> std::fmt::Result {
    use dfagent_peer::PeerCounters as C;
    gauge(
        enc,
        "dfagent_peers_connected",
        "Peers connected now",
        C::get(&c.peers_connected) as i64,
    )?;
    gauge(
        enc,
        "dfagent_peer_serve_pending",
        "Serve jobs (store read and verification for a peer) queued or running now",
        C::get(&c.serve_pending) as i64,
    )?;
    counter(
        enc,
        "dfagent_peer_provider_lookups",
        "Provider lookups in the peer network's DHT",
        C::get(&c.provider_lookups),
    )?;
    {
        // A sum beside the count of `dfagent_peer_provider_lookups` (rate(sum)/rate(count) is
        // the mean lookup time).
        let m = enc.encode_descriptor(
            "dfagent_peer_provider_lookup",
            "Total time provider lookups took",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        ConstCounter::new(C::get(&c.lookup_seconds_sum_micros) as f64 / 1e6).encode(m)?;
    }
    counter(
        enc,
        "dfagent_peer_served_chunks",
        "Verified chunks served to peers",
        C::get(&c.chunks_served),
    )?;
    counter(
        enc,
        "dfagent_peer_served_bytes",
        "Stored bytes of the chunks served to peers",
        C::get(&c.bytes_served),
    )?;
    counter(
        enc,
        "dfagent_peer_bans",
        "Peers banned for a chunk that failed verification or a protocol error",
        C::get(&c.bans),
    )?;
    counter_family(
        enc,
        "dfagent_peer_busy_answers",
        "Busy answers, sent (this node at its upload limit) and received",
        &[
            (
                vec![("direction", "sent".to_string())],
                C::get(&c.busy_answers_sent),
            ),
            (
                vec![("direction", "received".to_string())],
                C::get(&c.busy_answers_received),
            ),
        ],
    )?;
    counter(
        enc,
        "dfagent_peer_tampered_local_chunks",
        "Chunks of this node's store that failed verification when read for a peer (dropped, not sent)",
        C::get(&c.tampered_local),
    )?;
    counter_family(
        enc,
        "dfagent_peer_errors",
        "Peer exchanges that failed, by kind",
        &[
            (
                vec![("kind", "protocol".to_string())],
                C::get(&c.protocol_errors),
            ),
            (
                vec![("kind", "network".to_string())],
                C::get(&c.network_errors),
            ),
            (
                vec![("kind", "refused".to_string())],
                C::get(&c.refused_requests),
            ),
        ],
    )
}

/// The metrics text of `daemon`, in the Prometheus text format (0.0.4).
pub fn render(daemon: &Arc<Daemon>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Collector {
        daemon: daemon.clone(),
    }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// Whether the daemon is ready: its store is open and its control socket serves.
#[derive(Debug, Default)]
pub struct Readiness {
    control: AtomicBool,
}

impl Readiness {
    /// The control socket serves.
    pub fn control_ready(&self) {
        self.control.store(true, Ordering::SeqCst);
    }

    fn ready(&self, daemon: &Daemon) -> std::result::Result<(), &'static str> {
        if daemon.node().store().is_none() {
            return Err("no chunk store");
        }
        if !self.control.load(Ordering::SeqCst) {
            return Err("control socket not serving yet");
        }
        Ok(())
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown` completes. Returns the
/// address actually bound (for port 0) through `bound`.
pub async fn serve(
    daemon: Arc<Daemon>,
    readiness: Arc<Readiness>,
    addr: SocketAddr,
    bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| NodeError::io(format!("binding the metrics listener {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| NodeError::io("metrics listener address", e))?;
    tracing::info!(addr = %local, "metrics listening");
    bound(local);
    let d = daemon.clone();
    let d2 = daemon.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let d = d.clone();
                async move {
                    let body = tokio::task::spawn_blocking(move || render(&d))
                        .await
                        .unwrap_or_default();
                    (
                        [(
                            header::CONTENT_TYPE,
                            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                        )],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let (d, r) = (d2.clone(), readiness.clone());
                async move {
                    match r.ready(&d) {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| NodeError::io("metrics server", e))
}
