//! `tracker_info.txt`: the list of trackers, one a line.
//!
//! Each line is `HOST:PORT` or `HOST PORT`; blank lines and `#` comments are
//! ignored. IPv6 hosts are written in brackets (`[::1]:7001`).

use std::path::Path;

/// Errors reading the tracker list.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: expected HOST:PORT or HOST PORT, got {text:?}")]
    Malformed {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path} lists no trackers")]
    Empty { path: String },
}

/// Reads the file: every tracker's address as `HOST:PORT`, in file order.
pub fn read(path: &Path) -> Result<Vec<String>, InfoError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InfoError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses the file's text; `path` is only used in error messages.
pub fn parse(text: &str, path: &str) -> Result<Vec<String>, InfoError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = || InfoError::Malformed {
            path: path.to_string(),
            line: i + 1,
            text: raw.to_string(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let (host, port) = match words.as_slice() {
            [one] => one.rsplit_once(':').ok_or_else(bad)?,
            [host, port] => (*host, *port),
            _ => return Err(bad()),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        if host.contains(':') {
            out.push(format!("[{host}]:{port}"));
        } else {
            out.push(format!("{host}:{port}"));
        }
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
    fn both_forms_comments_and_blank_lines() {
        let text = "# trackers\n\n127.0.0.1:7001\n  localhost 7002  # second\n[::1]:7003\n";
        assert_eq!(
            parse(text, "t").unwrap(),
            vec!["127.0.0.1:7001", "localhost:7002", "[::1]:7003"]
        );
    }

    #[test]
    fn malformed_lines_name_their_number() {
        for (text, line) in [
            ("127.0.0.1:7001\nnonsense\n", 2),
            ("a:b\n", 1),
            ("\n\nh 1 2\n", 3),
            ("h:70000\n", 1),
            (":7001\n", 1),
        ] {
            match parse(text, "t") {
                Err(InfoError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("# only\n", "t"),
            Err(InfoError::Empty { .. })
        ));
        let msg = parse("x\n", "tracker_info.txt").unwrap_err().to_string();
        assert!(msg.contains("line 1"), "{msg}");
    }
}
