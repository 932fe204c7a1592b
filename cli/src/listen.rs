//! Listen addresses from the command line: `IP:PORT`, or `localhost:PORT` for loopback.

use std::net::{Ipv4Addr, SocketAddr};

/// Parses a listen address; `localhost` means 127.0.0.1 (no resolver is asked, so the
/// address cannot turn out to be a public one).
pub fn listen_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    // An IPv6 pod address without brackets, as `$(POD_IP):PORT` gives it.
    if let Some((host, port)) = s.rsplit_once(':')
        && let (Ok(ip), Ok(port)) = (host.parse::<std::net::Ipv6Addr>(), port.parse::<u16>())
    {
        return Ok(SocketAddr::from((ip, port)));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if host.eq_ignore_ascii_case("localhost") => port
            .parse::<u16>()
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
            .map_err(|_| format!("{port:?} is not a port number")),
        _ => Err(format!(
            "write IP:PORT (e.g. 127.0.0.1:9465, [::1]:9465, 0.0.0.0:9465) or localhost:PORT, not {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_localhost() {
        assert_eq!(listen_addr("127.0.0.1:80").unwrap().port(), 80);
        assert_eq!(listen_addr("[::1]:81").unwrap().port(), 81);
        assert_eq!(
            listen_addr("localhost:9465").unwrap(),
            "127.0.0.1:9465".parse().unwrap()
        );
        assert!(listen_addr("LocalHost:1").is_ok());
        assert_eq!(
            listen_addr("fd00::7:9464").unwrap(),
            "[fd00::7]:9464".parse().unwrap()
        );
        assert!(
            listen_addr("localhost:x")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            listen_addr("example.com:80")
                .unwrap_err()
                .contains("IP:PORT")
        );
    }
}
