//! Property/fuzz tests of the shell's line parser (`client::shell`): random bytes
//! and random quoted strings never make the tokenizer or the command table panic,
//! quoting any arguments gives them back exactly, and every command of the table
//! parses from its quoted arguments.
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p client --test fuzz_shell`.

use client::shell::{parse, tokenize, Command, ShellError, COMMANDS, MAX_LINE};
use proptest::prelude::*;
use wire::command::TrackerCommand as C;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Quotes one argument so the tokenizer gives it back unchanged.
fn quote(arg: &str) -> String {
    let mut s = String::with_capacity(arg.len() + 2);
    s.push('"');
    for c in arg.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Any argument, biased towards quotes, backslashes and blanks.
fn arg() -> impl Strategy<Value = String> {
    prop_oneof![".{0,16}", "[\"\\\\ \\ta-z]{0,12}", "\\PC{0,8}"]
}

/// Shell-ish noise: words, quotes, backslashes, blanks, command names.
fn noisy_line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[\"\\\\ \\t\\r]",
        "[a-z_]{1,14}",
        prop::sample::select(
            COMMANDS
                .iter()
                .map(|c| c.name.to_string())
                .collect::<Vec<_>>()
        ),
        ".",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), logged_in in any::<bool>()) {
        let line = String::from_utf8_lossy(&bytes);
        let user = logged_in.then_some("u");
        let _ = tokenize(&line);
        let _ = parse(&line, user, |_| false);
        let _ = parse(&line, user, |_| true);
    }

    #[test]
    fn noisy_lines_never_panic(line in noisy_line(), logged_in in any::<bool>(), files in any::<bool>()) {
        let user = logged_in.then_some("u");
        match tokenize(&line) {
            Ok(words) => {
                for w in &words {
                    prop_assert!(w.len() <= line.len());
                }
            }
            Err(e) => prop_assert_eq!(e, ShellError::UnbalancedQuote),
        }
        let _ = parse(&line, user, |_| files);
    }

    #[test]
    fn quoted_args_round_trip(args in proptest::collection::vec(arg(), 0..8),
                              seps in proptest::collection::vec("[ \\t]{1,3}", 8)) {
        let mut line = String::new();
        for (a, sep) in args.iter().zip(&seps) {
            line.push_str(&quote(a));
            line.push_str(sep);
        }
        prop_assert_eq!(tokenize(&line).unwrap(), args.clone());
        // Leading blanks change nothing either.
        prop_assert_eq!(tokenize(&format!(" \t{line}")).unwrap(), args);
    }

    #[test]
    fn plain_words_need_no_quotes(words in proptest::collection::vec("[^ \\t\\r\\n\"]{1,12}", 0..8)) {
        prop_assert_eq!(tokenize(&words.join(" ")).unwrap(), words);
    }

    #[test]
    fn every_command_parses_from_quoted_args(which in 0..COMMANDS.len(),
                                             args in proptest::collection::vec(arg(), 3)) {
        let spec = &COMMANDS[which];
        let given = &args[..spec.args.len()];
        let mut line = quote(spec.name);
        for a in given {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let user = if spec.name == "login" { None } else { Some("u") };
        let cmd = parse(&line, user, |_| false).unwrap().expect("a command");
        let a = |i: usize| given[i].clone();
        let want = match spec.name {
            "create_user" => Command::Tracker(C::CreateUser { user: a(0), password: a(1) }),
            "login" => Command::Tracker(C::Login { user: a(0), password: a(1) }),
            "logout" => Command::Tracker(C::Logout),
            "create_group" => Command::Tracker(C::CreateGroup { group: a(0) }),
            "join_group" => Command::Tracker(C::JoinGroup { group: a(0) }),
            "leave_group" => Command::Tracker(C::LeaveGroup { group: a(0) }),
            "list_groups" => Command::Tracker(C::ListGroups),
            "list_requests" => Command::Tracker(C::ListRequests { group: a(0) }),
            "accept_request" => Command::Tracker(C::AcceptRequest { group: a(0), user: a(1) }),
            "reject_request" => Command::Tracker(C::RejectRequest { group: a(0), user: a(1) }),
            "list_files" => Command::Tracker(C::ListFiles { group: a(0) }),
            "upload_file" => Command::UploadFile { path: a(0), group: a(1) },
            "download_file" => Command::DownloadFile { group: a(0), name: a(1), dest: a(2) },
            "show_downloads" => Command::ShowDownloads,
            "rate_limit" => Command::RateLimit { up: None, down: None },
            "stop_share" => Command::Tracker(C::StopShare { group: a(0), name: a(1) }),
            "help" => Command::Help,
            "quit" => Command::Quit,
            other => panic!("command {other} missing from this test"),
        };
        prop_assert_eq!(cmd, want);
        // One argument too many is a usage error, never a command.
        line.push_str(" extra");
        prop_assert_eq!(parse(&line, user, |_| false), Err(ShellError::Usage(spec)));
    }

    #[test]
    fn unbalanced_quotes_are_refused(args in proptest::collection::vec(arg(), 0..4), tail in "[^\"\\\\]{0,10}") {
        let mut line: Vec<String> = args.iter().map(|a| quote(a)).collect();
        line.push(format!("\"{tail}"));
        prop_assert_eq!(tokenize(&line.join(" ")), Err(ShellError::UnbalancedQuote));
    }
}

/// Regression and edge cases kept from fuzzing.
#[test]
fn edges() {
    assert_eq!(
        tokenize(&"x".repeat(MAX_LINE + 1)),
        Err(ShellError::TooLong)
    );
    assert_eq!(tokenize(&"x".repeat(MAX_LINE)).unwrap().len(), 1);
    // A backslash before the closing quote escapes it: unbalanced.
    assert_eq!(tokenize("\"abc\\\""), Err(ShellError::UnbalancedQuote));
    // A lone backslash outside quotes is itself; a quote may follow any word.
    assert_eq!(tokenize("a\\ b").unwrap(), vec!["a\\", "b"]);
    assert_eq!(tokenize("a\"\"").unwrap(), vec!["a"]);
    assert_eq!(tokenize("\"\" \"\"").unwrap(), vec!["", ""]);
    // Multi-byte characters next to quotes.
    assert_eq!(tokenize("ü\"🦀 x\"é").unwrap(), vec!["ü🦀 xé"]);
    assert_eq!(
        parse("\u{0}", Some("u"), |_| false),
        Err(ShellError::Unknown("\u{0}".into()))
    );
}
