//! systemd readiness notification (`sd_notify`, the `Type=notify` protocol): one datagram
//! such as `READY=1` to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for
//! the abstract namespace). Without the variable — not started by systemd — it does
//! nothing. Written with std's `UnixDatagram` instead of a crate: the protocol is one
//! `sendto`, and the crates need `unsafe` for the socket-activation half we do not use.
//! Spec: sd_notify(3).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Sends `state` (e.g. `READY=1`) to systemd if it asked for notifications; a failure is
/// logged, not fatal (the service manager then times the start out by itself).
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET_ENV) else { return };
    match send(&target, state) {
        Ok(()) => tracing::debug!(state, "notified the service manager"),
        Err(e) => {
            tracing::warn!(error = %e, socket = ?target, state, "cannot notify the service manager ($NOTIFY_SOCKET)")
        }
    }
}

fn send(target: &OsStr, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else if bytes.starts_with(b"/") {
        socket.send_to(state.as_bytes(), Path::new(target))?;
    } else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path or @abstract name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("keyward-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn refuses_a_relative_target() {
        assert_eq!(send(OsStr::new("relative/sock"), "READY=1").unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
