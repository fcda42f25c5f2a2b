//! Property/fuzz tests of the `sync_log.txt` line format: decoding any bytes never
//! panics, every entry (with its sequence number and request id) encodes and
//! decodes to itself, and a valid line with bytes flipped, inserted or deleted is
//! never accepted as a *different* entry (it is refused, or, for changes that
//! leave the checksummed body intact, decodes to the same entry), unless the
//! CRC-32 of the changed body collides — which the test reports as such. At the
//! file level, a log whose lines were deleted, duplicated, swapped or damaged
//! anywhere is refused by start-up recovery and left byte for byte as it was.
//!
//! The format under test is the tracker library's own [`tracker::sync_log`].
//!
//! Case count: `SWARMSHARE_FUZZ_CASES` (default 2000 so the suite stays quick);
//! a long run: `SWARMSHARE_FUZZ_CASES=1000000 cargo test --release -p tracker --test fuzz_sync_log`.

use proptest::prelude::*;
use tracker::sync_log::{CachePos, FsyncMode, LogEntry, LogError, Op, SyncLog, LOG_FILE};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: wire::fuzz_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any string, biased towards the characters the escaping cares about.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[ \\\\\\n\\t%a-z0-9]{0,12}", "[a-f0-9]{40}"]
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (field(), field()).prop_map(|(user, password_hash)| Op::CreateUser {
            user,
            password_hash
        }),
        (field(), field()).prop_map(|(token_hash, user)| Op::Login { token_hash, user }),
        field().prop_map(|token_hash| Op::Logout { token_hash }),
        (field(), field()).prop_map(|(group, owner)| Op::CreateGroup { group, owner }),
        (field(), field()).prop_map(|(group, user)| Op::RequestJoin { group, user }),
        (field(), field()).prop_map(|(group, user)| Op::AcceptRequest { group, user }),
        (field(), field()).prop_map(|(group, user)| Op::RejectRequest { group, user }),
        (field(), field()).prop_map(|(group, user)| Op::LeaveGroup { group, user }),
        (
            (field(), field(), any::<u64>(), any::<u64>()),
            (field(), field(), field(), field(), field())
        )
            .prop_map(
                |(
                    (group, name, size, piece_size),
                    (file_sha1, piece_hashes, token_hash, user, peer_addr),
                )| Op::UploadFile {
                    group,
                    name,
                    size,
                    piece_size,
                    file_sha1,
                    piece_hashes,
                    token_hash,
                    user,
                    peer_addr,
                }
            ),
        (field(), field(), field(), field(), field(), any::<bool>()).prop_map(
            |(group, name, token_hash, user, peer_addr, partial)| Op::AddSeeder {
                group,
                name,
                token_hash,
                user,
                peer_addr,
                partial,
            }
        ),
        (field(), field(), field()).prop_map(|(group, name, token_hash)| Op::StopShare {
            group,
            name,
            token_hash
        }),
        (field(), field()).prop_map(|(token_hash, peer_addr)| Op::Heartbeat {
            token_hash,
            peer_addr
        }),
    ]
}

/// A request id: none, or any text but `-` (which means none in the log).
fn any_request_id() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(field().prop_filter("- means no id", |s| s != "-"))
}

fn any_entry() -> impl Strategy<Value = LogEntry> {
    (any::<u64>(), any::<u32>(), any_request_id(), any_op()).prop_map(
        |(ms, tracker, request_id, op)| LogEntry {
            ms,
            tracker,
            request_id,
            op,
        },
    )
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip { at: prop::sample::Index, mask: u8 },
    Set { at: prop::sample::Index, byte: u8 },
    Insert { at: prop::sample::Index, byte: u8 },
    Delete { at: prop::sample::Index },
    Truncate { at: prop::sample::Index },
}

fn any_edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, mask)| Edit::Flip { at, mask }),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Edit::Insert { at, byte }),
        any::<prop::sample::Index>().prop_map(|at| Edit::Delete { at }),
        any::<prop::sample::Index>().prop_map(|at| Edit::Truncate { at }),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    if bytes.is_empty() {
        if let Edit::Insert { byte, .. } = e {
            bytes.push(*byte);
        }
        return;
    }
    match e {
        Edit::Flip { at, mask } => {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        Edit::Set { at, byte } => {
            let i = at.index(bytes.len());
            bytes[i] = *byte;
        }
        Edit::Insert { at, byte } => {
            let i = at.index(bytes.len() + 1);
            bytes.insert(i, *byte);
        }
        Edit::Delete { at } => {
            let i = at.index(bytes.len());
            bytes.remove(i);
        }
        Edit::Truncate { at } => {
            let i = at.index(bytes.len());
            bytes.truncate(i);
        }
    }
}

/// The checksummed body of a line: after the first space, without the newline.
fn body(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let sp = line.iter().position(|&b| b == b' ')?;
    Some(&line[sp + 1..])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = LogEntry::decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_checksummed_garbage(text in "[ -~\\\\ü🦀]{0,120}") {
        // A body with a correct checksum gets past the CRC to the field parser.
        let line = format!("{:08x} {text}\n", crc32fast::hash(text.as_bytes()));
        let _ = LogEntry::decode(line.as_bytes());
    }

    #[test]
    fn entries_round_trip(entry in any_entry(), seq in any::<u64>()) {
        let line = entry.encode(seq);
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1);
        prop_assert_eq!(LogEntry::decode(line.as_bytes()), Ok((seq, entry.clone())));
        prop_assert_eq!(LogEntry::decode(line.trim_end_matches('\n').as_bytes()), Ok((seq, entry)));
    }

    /// A Raft entry (a line numbered 0) renumbered is the line the entry encodes to.
    #[test]
    fn a_renumbered_line_is_the_entry_encoded_with_the_new_number(entry in any_entry(), seq in any::<u64>()) {
        let raft_entry = entry.encode(0);
        prop_assert_eq!(
            LogEntry::decode_renumbered(raft_entry.as_bytes(), seq),
            Ok((entry.encode(seq), entry))
        );
    }

    #[test]
    fn mutated_lines_are_refused_or_unchanged(entry in any_entry(), seq in any::<u64>(),
                                              edits in proptest::collection::vec(any_edit(), 1..4)) {
        let line = entry.encode(seq).into_bytes();
        let mut bad = line.clone();
        for e in &edits {
            apply(&mut bad, e);
        }
        let entry = (seq, entry);
        if let Ok(got) = LogEntry::decode(&bad) {
            if got != entry {
                // Accepted as another entry: only possible if the CRC-32 of a changed
                // body matches the stored checksum. Say so loudly if it ever happens.
                let (old, new) = (body(&line).unwrap(), body(&bad).unwrap_or_default());
                prop_assert!(old != new, "same body decoded differently: {:?}", String::from_utf8_lossy(&bad));
                prop_assert_eq!(
                    crc32fast::hash(old),
                    crc32fast::hash(new),
                    "changed line {:?} accepted as a different entry {:?} without a CRC collision",
                    String::from_utf8_lossy(&bad),
                    got
                );
            }
        }
    }
}

/// Mutations found interesting while fuzzing, kept as regression cases: edits that
/// leave the checksummed body intact decode to the same entry, others are refused.
#[test]
fn regression_edits_outside_the_body() {
    let entry = LogEntry {
        ms: 1,
        tracker: 1,
        request_id: None,
        op: Op::CreateGroup {
            group: "g".into(),
            owner: "o".into(),
        },
    };
    let line = entry.encode(1);
    let entry = (1, entry);
    let (crc, rest) = line.split_once(' ').unwrap();
    // The newline is optional when decoding one line.
    assert_eq!(
        LogEntry::decode(line.trim_end().as_bytes()),
        Ok(entry.clone())
    );
    // Upper-case hex is the same number: the same entry, never a different one.
    let upper = format!("{} {rest}", crc.to_uppercase());
    assert!(LogEntry::decode(upper.as_bytes()).map_or(true, |e| e == entry));
    // A request id of `-` is no id at all.
    let dash = LogEntry {
        request_id: Some("-".into()),
        ..entry.1.clone()
    };
    assert_eq!(
        LogEntry::decode(dash.encode(1).as_bytes()),
        Ok(entry.clone())
    );
    // A short or long checksum field is refused.
    assert!(LogEntry::decode(format!("{} {rest}", &crc[1..]).as_bytes()).is_err());
    assert!(LogEntry::decode(format!("0{crc} {rest}").as_bytes()).is_err());
    // Two spaces after the checksum: the body changes, the CRC no longer matches.
    assert!(LogEntry::decode(format!("{crc}  {rest}").as_bytes()).is_err());
    // A second line glued on is part of the body and breaks the checksum.
    let two = format!("{}{}", line.trim_end(), line);
    assert!(LogEntry::decode(two.as_bytes()).is_err());
}

/// One edit of a log's lines (indexes are taken modulo the line count).
#[derive(Debug, Clone)]
enum LineEdit {
    Delete(prop::sample::Index),
    Duplicate(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    FlipByte(prop::sample::Index, prop::sample::Index, u8),
}

fn any_line_edit() -> impl Strategy<Value = LineEdit> {
    let i = any::<prop::sample::Index>;
    prop_oneof![
        i().prop_map(LineEdit::Delete),
        i().prop_map(LineEdit::Duplicate),
        (i(), i()).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        (i(), i(), 1u8..=255).prop_map(|(a, b, m)| LineEdit::FlipByte(a, b, m)),
    ]
}

/// File-level cases write and fsync a log each: a tenth of the line cases, at
/// most 5,000 (a long line-level run stays minutes, not hours).
fn file_config() -> ProptestConfig {
    ProptestConfig {
        cases: (config().cases / 10).clamp(50, 5_000),
        ..config()
    }
}

proptest! {
    #![proptest_config(file_config())]

    /// A cache that applied the whole log restarts against an edited log: every
    /// edit is refused (damaged or changed), and nothing is cut.
    #[test]
    fn edited_logs_are_refused_and_left_as_they_are(
        entries in proptest::collection::vec(any_entry(), 2..8),
        edit in any_line_edit(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let log = SyncLog::open(dir.path(), FsyncMode::Batch).unwrap();
        let lines: Vec<String> = entries.iter().enumerate().map(|(i, e)| e.encode(i as u64 + 1)).collect();
        log.append(&lines).unwrap();
        let full = CachePos { generation: Some(log.generation()), offset: log.file_len().unwrap(), lines: lines.len() as u64 };
        let mut edited = lines.clone();
        let n = lines.len();
        match &edit {
            LineEdit::Delete(i) => { edited.remove(i.index(n)); }
            LineEdit::Duplicate(i) => { let l = edited[i.index(n)].clone(); edited.insert(i.index(n), l); }
            LineEdit::Swap(a, b) => {
                let (a, b) = (a.index(n), b.index(n));
                prop_assume!(a != b);
                edited.swap(a, b);
            }
            LineEdit::FlipByte(i, at, mask) => {
                let line = &mut edited[i.index(n)];
                let mut bytes = std::mem::take(line).into_bytes();
                let k = at.index(bytes.len());
                bytes[k] ^= mask;
                *line = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        let path = dir.path().join(LOG_FILE);
        let mut text = log.generation().header_line();
        text.push_str(&edited.concat());
        std::fs::write(&path, &text).unwrap();
        match log.recover(full) {
            Err(LogError::Damaged { .. } | LogError::Changed { .. }) => {}
            other => prop_assert!(false, "{:?} not refused: {:?}", edit, other),
        }
        prop_assert_eq!(std::fs::read(&path).unwrap(), text.into_bytes());
    }
}
