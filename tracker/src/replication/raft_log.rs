//! Sends raft-rs's `slog` records to the tracker's `log` output (simplelog), under the
//! target `raft`.
//!
//! raft-rs narrates every election at its info level; the tracker's own one-line
//! summary of a role change ([`super::node`]: `tracker 2 is leader (term 7)`) is the
//! info-level line operators read, so raft's info and debug records go to `debug`,
//! its trace to `trace`, and its warnings and errors keep their level.

use std::fmt::{self, Write};

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// A `slog` drain that writes to the `log` crate.
pub struct LogDrain;

/// The root `slog` logger raft-rs is given, tagged with this tracker's number.
pub fn logger(tracker_no: u64) -> slog::Logger {
    slog::Logger::root(LogDrain, slog::o!("tracker" => tracker_no))
}

fn level(l: slog::Level) -> log::Level {
    match l {
        slog::Level::Critical | slog::Level::Error => log::Level::Error,
        slog::Level::Warning => log::Level::Warn,
        slog::Level::Info | slog::Level::Debug => log::Level::Debug,
        slog::Level::Trace => log::Level::Trace,
    }
}

/// Collects a record's key-value pairs as ` key=value`.
struct Pairs(String);

impl Serializer for Pairs {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for LogDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = level(record.level());
        if !log::log_enabled!(target: "raft", level) {
            return Ok(());
        }
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        log::log!(target: "raft", level, "{}{}", record.msg(), pairs.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_with_info_demoted() {
        assert_eq!(level(slog::Level::Critical), log::Level::Error);
        assert_eq!(level(slog::Level::Warning), log::Level::Warn);
        assert_eq!(level(slog::Level::Info), log::Level::Debug);
        assert_eq!(level(slog::Level::Trace), log::Level::Trace);
    }

    #[test]
    fn logging_through_the_drain_does_not_fail() {
        let l = logger(3);
        slog::warn!(l, "a warning"; "term" => 7);
    }
}
