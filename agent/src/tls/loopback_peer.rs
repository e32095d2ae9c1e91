//! Who is on the other end of a loopback TCP connection: the uid that owns the client's
//! socket, read from the kernel's socket tables (`/proc/net/tcp`, `/proc/net/tcp6`), the
//! way identd answers. A loopback listener is reachable by every local user; without this
//! check any of them could make the tunnel sign a handshake as the site.
//!
//! The uid is the one that *created* the client socket (a socket handed to another process
//! keeps it), read while the connection is open, so it cannot belong to a recycled socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The uid owning the TCP socket whose local address is `client` and whose remote address
/// is `server`, or `None` when no such socket is listed (for example a non-local peer).
///
/// # Errors
/// When the socket tables cannot be read.
pub fn owner_uid(client: SocketAddr, server: SocketAddr) -> std::io::Result<Option<u32>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(uid) = find_uid(&text, client, server) {
            return Ok(Some(uid));
        }
    }
    Ok(None)
}

/// Finds the line of a `/proc/net/tcp{,6}` table for the socket `local` → `remote`.
fn find_uid(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (l, r, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        (same(parse_address(l)?, local) && same(parse_address(r)?, remote)).then(|| uid.parse().ok())?
    })
}

/// Equal addresses, counting an IPv4-mapped IPv6 address as its IPv4 address.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word of the
/// address is printed in the kernel's byte order (little-endian here), the port big-endian.
fn parse_address(field: &str) -> Option<SocketAddr> {
    let (ip_hex, port_hex) = field.split_once(':')?;
    let port = u16::from_str_radix(port_hex, 16).ok()?;
    let words: Vec<u32> = (0..ip_hex.len() / 8)
        .map(|i| ip_hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()))
        .collect::<Option<_>>()?;
    let mut bytes = Vec::with_capacity(16);
    for word in &words {
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match (ip_hex.len(), bytes.len()) {
        (8, 4) => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        (32, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Linux prints them on little-endian machines.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 1002 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:1F91 01 00000000:00000000 00:00000000 00000000    65534        0 2001 1 0000000000000000 20 4 30 10 -1
   1: 0000000000000000FFFF00000100007F:C351 0000000000000000FFFF00000100007F:1F92 01 00000000:00000000 00:00000000 00000000    33        0 2002 1 0000000000000000 20 4 30 10 -1
";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn finds_the_owner_of_a_loopback_client_socket() {
        assert_eq!(find_uid(TCP, addr("127.0.0.1:54321"), addr("127.0.0.1:8080")), Some(1000));
        // The listening socket and the reverse direction are not the client's.
        assert_eq!(find_uid(TCP, addr("127.0.0.1:8080"), addr("127.0.0.1:54321")), None);
        assert_eq!(find_uid(TCP, addr("127.0.0.1:54322"), addr("127.0.0.1:8080")), None);
        assert_eq!(find_uid(TCP6, addr("[::1]:50000"), addr("[::1]:8081")), Some(65534));
        // An IPv4 client of a dual-stack listener appears IPv4-mapped in tcp6.
        assert_eq!(find_uid(TCP6, addr("127.0.0.1:50001"), addr("127.0.0.1:8082")), Some(33));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let table = "header\n 0: zz:1F90 0100007F:1F90 01 x x x 5\n 1: 0100007F 0100007F:1F90\n";
        assert_eq!(find_uid(table, addr("127.0.0.1:8080"), addr("127.0.0.1:8080")), None);
        assert_eq!(parse_address("0100007F:1F90"), Some(addr("127.0.0.1:8080")));
        assert_eq!(parse_address("0100007F"), None);
        assert_eq!(parse_address("01000:1F90"), None);
    }

    #[test]
    fn the_running_process_owns_its_own_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        let uid = owner_uid(peer, accepted.local_addr().unwrap()).unwrap();
        assert_eq!(uid, Some(nix::unistd::geteuid().as_raw()));
        drop(client);
    }
}
