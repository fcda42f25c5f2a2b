//! `tracker_info.txt`: the list of trackers, one a line, read by both binaries.
//!
//! Each line is `HOST:PORT` or `HOST PORT` (the form many copies of the original
//! assignment use); blank lines and `#` comments are ignored. IPv6 hosts are
//! written in brackets (`[::1]:7001`). A malformed line is an error naming its
//! line number. Port 0 is accepted: a tracker then listens on a port the OS
//! picks (the tests use this).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;

/// One line of tracker_info.txt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerAddr {
    pub host: String,
    pub port: u16,
}

impl TrackerAddr {
    /// Resolves the address (a DNS lookup for host names).
    pub fn resolve(&self) -> io::Result<SocketAddr> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        (host, self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "host name has no address"))
    }
}

impl std::fmt::Display for TrackerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('[') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A tracker_info.txt that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error(
        "{path} line {line}: malformed tracker address {text:?} (expected HOST:PORT or HOST PORT)"
    )]
    Malformed {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path}: no trackers listed")]
    Empty { path: String },
}

/// Reads and parses a tracker_info.txt.
pub fn load(path: &Path) -> Result<Vec<TrackerAddr>, InfoError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InfoError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses tracker_info.txt text: `HOST:PORT` or `HOST PORT` a line, blank lines
/// and `#` comments ignored. `path` only names the file in errors.
pub fn parse(text: &str, path: &str) -> Result<Vec<TrackerAddr>, InfoError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || InfoError::Malformed {
            path: path.to_string(),
            line: i + 1,
            text: raw.trim().to_string(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let (host, port) = match words.as_slice() {
            [host, port] => (*host, *port),
            [one] => one.rsplit_once(':').ok_or_else(malformed)?,
            _ => return Err(malformed()),
        };
        let port: u16 = port.parse().map_err(|_| malformed())?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(malformed());
        }
        out.push(TrackerAddr {
            host: host.to_string(),
            port,
        });
    }
    if out.is_empty() {
        return Err(InfoError::Empty {
            path: path.to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_info_forms() {
        let text = "# trackers\n127.0.0.1:7001\n\n  localhost 7002  # second\n[::1]:7003\n";
        let t = parse(text, "info").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].to_string(), "127.0.0.1:7001");
        assert_eq!(t[1].to_string(), "localhost:7002");
        assert_eq!(t[2].to_string(), "[::1]:7003");
        assert_eq!(t[2].resolve().unwrap(), "[::1]:7003".parse().unwrap());
        assert_eq!(t[0].resolve().unwrap(), "127.0.0.1:7001".parse().unwrap());
    }

    #[test]
    fn tracker_info_errors() {
        let e = parse("127.0.0.1:7001\nnonsense\n", "ti.txt").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ti.txt line 2: malformed tracker address \"nonsense\" (expected HOST:PORT or HOST PORT)"
        );
        for bad in ["h:x", ":7001", "a b c", "h 70000"] {
            assert!(
                matches!(parse(bad, "f"), Err(InfoError::Malformed { line: 1, .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse("# only\n\n", "f"),
            Err(InfoError::Empty { .. })
        ));
    }

    #[test]
    fn malformed_lines_name_their_number() {
        for (text, line) in [
            ("127.0.0.1:7001\nnonsense\n", 2),
            ("a:b\n", 1),
            ("\n\nh 1 2\n", 3),
            ("h:70000\n", 1),
        ] {
            match parse(text, "t") {
                Err(InfoError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }
}
