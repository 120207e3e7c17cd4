//! The contract between the resolver and its tiers.
//!
//! A tier (a local blob directory, the chunk store, peers, Dragonfly, the registry) implements
//! [`ChunkTier`]. It is handed a batch of [`Slot`]s, one per chunk wanted, and fills in each
//! slot's [`Answer`] in place: the chunk's bytes *as stored* with their encoding, "not here", or
//! the error that kept it from getting them. There is no position to map back: the answer lives
//! beside the chunk it answers. Bytes are not verified by tiers; the resolver decodes and
//! verifies every answer, and tells the tier through [`ChunkTier::bad_answer`] when one of its
//! answers failed, so a tier can retry (the registry: a bit flipped on the wire) or distrust its
//! source (a peer that lies). The node's own store plays a role of its own, [`ChunkStore`]:
//! asked first, fed with what the other tiers delivered, and told to drop copies that failed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::{ChunkRef, Compression};

/// A boxed, sendable future: what the object-safe traits of this crate return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A chunk's bytes as a tier holds them (not yet verified) and their encoding.
#[derive(Clone, Debug)]
pub struct StoredChunk {
    /// The bytes, encoded as `compression` says.
    pub data: Bytes,
    /// Encoding of `data`. Tiers that read blobs answer in the reference's encoding; the store
    /// answers in whatever encoding the chunk arrived with (a chunk shared by two images may be
    /// compressed differently in each).
    pub compression: Compression,
}

/// The broad kind of a tier failure: a label for metrics and for deciding what to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierErrorKind {
    /// Local I/O (a blob file, the store's database).
    Io,
    /// A network connection failed or broke.
    Network,
    /// No answer in time.
    Timeout,
    /// The remote answered with an error status (HTTP 5xx/4xx, a refused request).
    Status,
    /// Credentials were refused.
    Auth,
    /// The remote is at its limit and asks us to go elsewhere.
    Busy,
    /// The remote broke the protocol (a short range, a malformed message).
    Protocol,
    /// Anything else (a task that died, a bug).
    Other,
}

impl TierErrorKind {
    /// Every kind, in a fixed order (for per-kind counters).
    pub const ALL: [TierErrorKind; 8] = [
        TierErrorKind::Io,
        TierErrorKind::Network,
        TierErrorKind::Timeout,
        TierErrorKind::Status,
        TierErrorKind::Auth,
        TierErrorKind::Busy,
        TierErrorKind::Protocol,
        TierErrorKind::Other,
    ];

    /// Lower-case name, as used in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            TierErrorKind::Io => "io",
            TierErrorKind::Network => "network",
            TierErrorKind::Timeout => "timeout",
            TierErrorKind::Status => "status",
            TierErrorKind::Auth => "auth",
            TierErrorKind::Busy => "busy",
            TierErrorKind::Protocol => "protocol",
            TierErrorKind::Other => "other",
        }
    }

    /// Position in [`TierErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TierErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a tier could not get a chunk, as the tier says it ("registry: HTTP 503 after 3 tries").
/// Carries no secrets: tiers word it for logs and users.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{tier}: {message}")]
pub struct TierError {
    /// Name of the tier.
    pub tier: String,
    /// Broad kind.
    pub kind: TierErrorKind,
    /// What went wrong.
    pub message: String,
}

impl TierError {
    /// An error of tier `tier`.
    pub fn new(tier: impl Into<String>, kind: TierErrorKind, message: impl Into<String>) -> Self {
        Self {
            tier: tier.into(),
            kind,
            message: message.into(),
        }
    }
}

/// What a tier answered for one chunk.
#[derive(Clone, Debug, Default)]
pub enum Answer {
    /// The tier does not have the chunk (the next tier is asked).
    #[default]
    Missing,
    /// The chunk's stored bytes (verified by the resolver before anyone uses them).
    Found(StoredChunk),
    /// The tier tried and failed; the error reaches the reader if no later tier has the chunk.
    Failed(TierError),
}

/// One chunk a tier is asked for, and the tier's answer for it (initially
/// [`Answer::Missing`]).
#[derive(Clone, Debug)]
pub struct Slot {
    chunk: ChunkRef,
    answer: Answer,
    background: bool,
}

impl Slot {
    /// A slot asking for `chunk`, not yet answered.
    pub fn new(chunk: ChunkRef) -> Self {
        Self {
            chunk,
            answer: Answer::Missing,
            background: false,
        }
    }

    /// Mark the slot as background work (prefetch, pull), not a reader waiting: a tier that
    /// can tell its source (a Dragonfly seed's priority) may ask at a lower priority.
    pub fn set_background(&mut self, background: bool) {
        self.background = background;
    }

    /// Whether the chunk is wanted by background work rather than a waiting reader.
    pub fn is_background(&self) -> bool {
        self.background
    }

    /// The chunk wanted.
    pub fn chunk(&self) -> &ChunkRef {
        &self.chunk
    }

    /// The answer so far.
    pub fn answer(&self) -> &Answer {
        &self.answer
    }

    /// Answer with the chunk's stored bytes, encoded as `compression`.
    pub fn found(&mut self, data: Bytes, compression: Compression) {
        self.answer = Answer::Found(StoredChunk { data, compression });
    }

    /// Answer with a failure.
    pub fn failed(&mut self, error: TierError) {
        self.answer = Answer::Failed(error);
    }

    /// Take the answer out, leaving [`Answer::Missing`].
    pub fn take_answer(&mut self) -> Answer {
        std::mem::take(&mut self.answer)
    }
}

/// Answer `slots` in order with `answers` (one per slot; extra answers are ignored, slots
/// without one stay unanswered): for tiers that work out their answers off the async runtime
/// and fill the slots afterwards.
pub fn answer_all(slots: &mut [Slot], answers: Vec<Answer>) {
    for (slot, answer) in slots.iter_mut().zip(answers) {
        slot.answer = answer;
    }
}

/// Fail every slot with `error` (a tier that could not work at all).
pub fn fail_all(slots: &mut [Slot], error: &TierError) {
    for slot in slots.iter_mut() {
        slot.failed(error.clone());
    }
}

/// Slots asking for each of `chunks`, in order.
pub fn slots_for(chunks: &[ChunkRef]) -> Vec<Slot> {
    chunks.iter().copied().map(Slot::new).collect()
}

/// What a tier wants after one of its answers failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Ask me again for that chunk (the resolver bounds how often).
    AskAgain,
    /// Do not: go on to the next tier.
    Next,
}

/// A place chunks can be fetched from, by reference, as stored.
pub trait ChunkTier: Send + Sync {
    /// Short name for logs and metrics (`blobdir`, `store`, `registry`, `peer`, `dragonfly`).
    fn name(&self) -> &str;

    /// Answer every slot: [`Slot::found`] for chunks it has, [`Slot::failed`] for chunks it could
    /// not get because something broke, and nothing for chunks it does not have. Bytes are not
    /// verified here.
    fn fetch<'a>(&'a self, slots: &'a mut [Slot]) -> BoxFuture<'a, ()>;

    /// The bytes this tier answered for `chunk` failed verification (`detail` says how). Called
    /// once per bad answer, before the resolver decides what to do next; the default goes on to
    /// the next tier.
    fn bad_answer(&self, chunk: &ChunkRef, detail: &str) -> Retry {
        let _ = (chunk, detail);
        Retry::Next
    }
}

/// The node's chunk store as the resolver uses it: asked first (as a [`ChunkTier`]), fed with
/// every chunk another tier delivered once it is verified, and told to drop copies of its own
/// that failed verification. The methods block (they are called on the resolver's write-back
/// thread and on blocking threads).
pub trait ChunkStore: ChunkTier {
    /// Keep `stored` (verified) under `chunk`'s digest.
    fn put(&self, chunk: &ChunkRef, stored: &StoredChunk) -> Result<(), TierError>;

    /// A copy of `chunk` this store handed out failed verification: drop it.
    fn reject(&self, chunk: &ChunkRef, detail: &str);
}
