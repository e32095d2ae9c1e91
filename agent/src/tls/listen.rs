//! Where the tunnel's local clients connect, and who they are: a loopback TCP port (the
//! client's user read from the kernel's socket tables, `loopback_peer.rs`) or a Unix socket
//! (the client's user from `SO_PEERCRED`). Either way a client whose uid is not allowed is
//! closed before anything else happens.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// `--listen`: `ADDR:PORT` or `unix:/path/to/socket`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some(path) if Path::new(path).is_absolute() => Ok(Self::Unix(path.into())),
            Some(_) => Err(format!("`{text}`: a Unix socket needs an absolute path (unix:/run/keyward/fl.sock)")),
            None => text.parse().map(Self::Tcp).map_err(|_| format!("`{text}` is neither ADDR:PORT nor unix:/path")),
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener; a Unix socket file is removed again when this is dropped.
pub enum LocalListener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket and its path.
    Unix(UnixListener, PathBuf),
}

impl LocalListener {
    /// Binds `addr`. A Unix socket is made 0600, or 0666 when `shared` (other users are
    /// allowed: the uid check, not the file mode, decides); an existing socket file is
    /// replaced only when nothing answers on it.
    ///
    /// # Errors
    /// The address cannot be bound, a live listener owns the path, or the path is not a
    /// socket.
    pub async fn bind(addr: &ListenAddr, shared: bool) -> std::io::Result<Self> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("`{}` exists and is not a socket", path.display()),
                        ));
                    }
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!("another process is listening on `{}`", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                let mode = if shared { 0o666 } else { 0o600 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
                Ok(Self::Unix(listener, path.clone()))
            }
        }
    }

    /// Where clients connect (with the port the OS chose for `:0`).
    pub fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(ListenAddr::Tcp),
            Self::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }

    /// The next client, its description for logs, and the uid that owns its end (`None`
    /// when the kernel does not say: a non-local TCP peer).
    ///
    /// # Errors
    /// `accept` failed (for example out of file descriptors).
    pub async fn accept(&self) -> std::io::Result<(LocalStream, String, std::io::Result<Option<u32>>)> {
        match self {
            Self::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let owner = stream.local_addr().and_then(|local| super::loopback_peer::owner_uid(peer, local));
                Ok((LocalStream::Tcp(stream), peer.to_string(), owner))
            }
            Self::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                let cred = stream.peer_cred();
                let peer = match &cred {
                    Ok(c) => format!("unix uid={} pid={}", c.uid(), c.pid().unwrap_or(0)),
                    Err(_) => "unix".to_owned(),
                };
                Ok((LocalStream::Unix(stream), peer, cred.map(|c| Some(c.uid()))))
            }
        }
    }
}

impl Drop for LocalListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A local client's connection.
pub enum LocalStream {
    /// Over TCP.
    Tcp(TcpStream),
    /// Over a Unix socket.
    Unix(UnixStream),
}

impl AsyncRead for LocalStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LocalStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_listen_addresses() {
        assert_eq!("127.0.0.1:8002".parse(), Ok(ListenAddr::Tcp("127.0.0.1:8002".parse().unwrap())));
        assert_eq!("unix:/run/kw/fl.sock".parse(), Ok(ListenAddr::Unix("/run/kw/fl.sock".into())));
        assert!("unix:fl.sock".parse::<ListenAddr>().is_err());
        assert!("localhost:8002".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::Unix("/a".into()).to_string(), "unix:/a");
    }
}
