//! Frames on an async stream, every read and write under a timeout.

use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::wire::{frame_len, WireError};

/// Why a stream exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    #[error("timed out")]
    Timeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
}

/// Read one frame body of at most `max` bytes within `timeout`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, StreamError> {
    let work = async {
        let mut prefix = [0u8; 4];
        r.read_exact(&mut prefix).await?;
        let len = frame_len(prefix, max)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        Ok::<_, StreamError>(body)
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| StreamError::Timeout)?
}

/// Write `bytes` (one or more whole frames) within `timeout`.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    timeout: Duration,
) -> Result<(), StreamError> {
    tokio::time::timeout(timeout, w.write_all(bytes))
        .await
        .map_err(|_| StreamError::Timeout)??;
    Ok(())
}

/// Flush and close within `timeout` (errors ignored: the exchange is over).
pub(crate) async fn finish<W: AsyncWrite + Unpin>(w: &mut W, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        let _ = w.flush().await;
        let _ = w.close().await;
    })
    .await;
}
