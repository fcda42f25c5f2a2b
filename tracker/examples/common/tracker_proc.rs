//! Starting the real `tracker` binary for the examples: one tracker on a free
//! port of 127.0.0.1, its `tracker_info.txt` in its data dir.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `bin` on `data` with `--snapshot-every every`; returns the child and
/// its address once it prints "listening on" (stdin stays piped: `quit` stops it).
pub fn start(bin: &Path, data: &Path, every: u64) -> (Child, String) {
    let port = free_port();
    let info = data.join("tracker_info.txt");
    std::fs::write(&info, format!("127.0.0.1:{port}\n")).unwrap();
    let mut child = Command::new(bin)
        .arg(&info)
        .arg("1")
        .arg("--data-dir")
        .arg(data)
        .arg("--snapshot-every")
        .arg(every.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tracker");
    let out = BufReader::new(child.stdout.take().unwrap());
    let listening = out
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    assert!(listening, "the tracker did not start");
    (child, format!("127.0.0.1:{port}"))
}

/// The `tracker` binary of the target dir this example was built in.
pub fn binary_beside_this_example() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("tracker")
}
