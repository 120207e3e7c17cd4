//! The control API client: connect to a daemon's socket (telling "no daemon here" apart from
//! "a daemon is here but you may not use it"), and call it.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use super::proto::control_client::ControlClient;

/// Why the daemon could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket exists but this user may not use it.
    #[error(
        "permission denied on the dfagent daemon's socket {socket} (mode {mode:o}, owner uid {uid}, group {gid}); run as root or as a member of group {gid}, or pass --no-daemon"
    )]
    AccessDenied {
        /// The socket.
        socket: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Something else went wrong talking to the socket.
    #[error("dfagent daemon socket {socket}: {source}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// A connected client.
pub type Client = ControlClient<Channel>;

/// Connect to the daemon at `socket`. `Ok(None)` when no daemon answers there (no socket file,
/// or nobody listening): the caller runs the work in-process instead.
pub async fn connect(socket: &Path) -> Result<Option<Client>, ConnectError> {
    // Classify with a plain connect first: tonic's errors do not keep the OS error.
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let meta = std::fs::metadata(socket).ok();
            return Err(ConnectError::AccessDenied {
                socket: socket.to_path_buf(),
                mode: meta
                    .as_ref()
                    .map(|m| m.permissions().mode() & 0o7777)
                    .unwrap_or(0),
                uid: meta.as_ref().map(|m| m.uid()).unwrap_or(0),
                gid: meta.as_ref().map(|m| m.gid()).unwrap_or(0),
            });
        }
        Err(source) => {
            return Err(ConnectError::Io {
                socket: socket.to_path_buf(),
                source,
            })
        }
    }
    let path = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    let endpoint = Endpoint::from_static("http://dfagent.sock");
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| ConnectError::Io {
            socket: socket.to_path_buf(),
            source: io::Error::other(e.to_string()),
        })?;
    Ok(Some(ControlClient::new(channel)))
}
