//! The interactive shell: on a terminal the client shows a `swarmshare> `
//! prompt (rustyline, with line editing and history); piped, it shows none.
//! The terminal is a real pseudo-terminal made by `script(1)` (util-linux).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{bin_path, lone_tracker, ClientProc, WAIT};

/// Runs the client under `script` so its stdin and stdout are a terminal, types
/// `lines` (waiting for each prompt), and returns everything the terminal showed.
fn on_a_terminal(info: &std::path::Path, state: &std::path::Path, lines: &[&str]) -> String {
    let cmd = format!(
        "{} {} --state-dir {} --listen 127.0.0.1:0",
        bin_path("client").display(),
        info.display(),
        state.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("script(1) from util-linux");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let wait_prompts = |seen: &mut String, count: usize| {
        let deadline = Instant::now() + WAIT;
        while seen.matches("swarmshare> ").count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!("waited for prompt {count}; the terminal showed:\n{seen}"),
            }
        }
    };
    let stdin = child.stdin.as_mut().unwrap();
    for (i, line) in lines.iter().enumerate() {
        wait_prompts(&mut seen, i + 1);
        stdin.write_all(format!("{line}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("client under script did not exit; showed:\n{seen}");
        }
        while let Ok(bytes) = rx.try_recv() {
            seen.push_str(&String::from_utf8_lossy(&bytes));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    seen
}

#[test]
fn a_terminal_gets_a_prompt_and_a_pipe_does_not() {
    let (dir, t) = lone_tracker(&[]);
    let state = dir.path().join("tty-state");
    let shown = on_a_terminal(
        &t.info,
        &state,
        &["create_user tty pw", "login tty pw", "list_groups", "quit"],
    );
    assert!(shown.contains("user tty created"), "{shown}");
    assert!(shown.contains("logged in as tty"), "{shown}");
    assert!(shown.contains("0 groups"), "{shown}");
    // One prompt per command typed, the next shown only after the previous reply.
    assert!(shown.matches("swarmshare> ").count() >= 4, "{shown}");
    let created = shown.find("user tty created").unwrap();
    let second_prompt = shown.match_indices("swarmshare> ").nth(1).unwrap().0;
    assert!(created < second_prompt, "{shown}");
    // History is kept in the state dir, without the lines that carry passwords.
    let history = std::fs::read_to_string(state.join(".shell_history")).unwrap_or_default();
    assert!(history.contains("list_groups"), "history: {history:?}");
    assert!(!history.contains("pw"), "passwords in history: {history:?}");

    // Piped: the same commands print their replies and no prompt at all.
    let mut c = ClientProc::start(&t.info, &dir.path().join("pipe-state"), &[]);
    assert_eq!(c.cmd("login tty pw"), "logged in as tty");
    assert_eq!(c.cmd("list_groups"), "0 groups");
    c.send("quit");
    assert_eq!(c.wait_exit(WAIT), Some(0));
    assert!(!c.stdout.text().contains("swarmshare>"));
}
