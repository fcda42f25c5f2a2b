//! The `/status` page: a [`Status`] as one self-contained HTML document that a
//! person reads at a glance. No JavaScript; it reloads itself every few seconds
//! (`<meta http-equiv="refresh">`). Every name that comes from users (groups,
//! files, users, change texts) goes through [`escape`].

use std::fmt::Write as _;

use crate::status::{human_bytes, Progress, Status, TrackerView};

/// Seconds between reloads of the page.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = "
body{font:15px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 28px}
header h1{margin:0;font-size:20px;font-weight:600}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
main{padding:18px 28px;max-width:1100px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002;padding:14px 18px;margin-bottom:16px}
h2{font-size:15px;margin:0 0 10px;text-transform:uppercase;letter-spacing:.04em;color:#4a5568}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e6e8ec;vertical-align:top}
th{font-size:12px;color:#667085;font-weight:600;text-transform:uppercase}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(110px,1fr));gap:12px}
.card{background:#f7f8fa;border-radius:6px;padding:10px 14px}
.card b{display:block;font-size:24px}
.card span{font-size:12px;color:#667085;text-transform:uppercase}
.up{color:#0a7a3b;font-weight:600}.down{color:#c0262d;font-weight:600}.warn{color:#b25e00}
.muted{color:#8a94a6}
code{font-family:ui-monospace,monospace;font-size:13px}
";

/// Escapes text for HTML element content and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-12-01 01:02:03 UTC` from Unix milliseconds.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `42 s ago`, `5 min ago`, `3 h ago`, `2 d ago`.
pub fn ago(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => "just now".to_string(),
        1..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        7200..=172_799 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// The whole page.
pub fn render(s: &Status) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>swarmshare tracker {no}</title><style>{STYLE}</style></head><body>\
         <header><h1>swarmshare tracker {no}</h1><p>replication: {mode} &middot; \
         sync_log.txt {log} &middot; as of {at} &middot; reloads every {REFRESH_SECS} s</p></header><main>",
        no = s.tracker,
        mode = escape(s.replication),
        log = human_bytes(s.log_bytes),
        at = utc(s.generated_unix_ms),
    );
    trackers(&mut o, s);
    totals(&mut o, s);
    groups(&mut o, s);
    swarms(&mut o, s);
    changes(&mut o, s);
    o.push_str("</main></body></html>\n");
    o
}

/// One line on the trackers as a whole: all well, or what is not.
fn health(s: &Status) -> String {
    let total = s.trackers.len();
    let down = s.trackers.iter().filter(|t| !t.reachable).count();
    let lagging = s.trackers.iter().filter(|t| t.progress.is_behind()).count();
    if down == 0 && lagging == 0 {
        return format!("<span class=\"up\">all {total} up and in step</span>");
    }
    let mut parts = Vec::new();
    if down > 0 {
        parts.push(format!(
            "<span class=\"down\">{down} of {total} unreachable</span>"
        ));
    }
    if lagging > 0 {
        parts.push(format!(
            "<span class=\"warn\">{lagging} behind the log</span>"
        ));
    }
    parts.join(", ")
}

fn trackers(o: &mut String, s: &Status) {
    let _ = write!(
        o,
        "<section id=\"trackers\"><h2>Trackers &middot; {}</h2><table><tr><th>#</th><th>Address</th>\
         <th>State</th><th class=\"n\">Applied</th><th class=\"n\">Behind</th></tr>",
        health(s)
    );
    for t in &s.trackers {
        let _ = write!(
            o,
            "<tr><td>{}{}</td><td><code>{}</code></td><td>{}</td>{}</tr>",
            t.no,
            if t.this {
                " <span class=\"muted\">(this)</span>"
            } else {
                ""
            },
            escape(&t.addr),
            state_cell(t),
            progress_cells(&t.progress, t.reachable),
        );
    }
    o.push_str("</table></section>");
}

fn state_cell(t: &TrackerView) -> &'static str {
    if t.reachable {
        "<span class=\"up\">&#9679; up</span>"
    } else {
        "<span class=\"down\">&#9679; unreachable</span>"
    }
}

/// A tracker that is down shows where its cache stopped, greyed out.
fn progress_cells(p: &Progress, reachable: bool) -> String {
    match p {
        Progress::SharedLog {
            applied_offset: Some(a),
            behind_bytes: Some(b),
            ..
        } => {
            if !reachable {
                return format!(
                    "<td class=\"n muted\" title=\"where its cache stopped\">{}</td>\
                     <td class=\"n muted\" title=\"{} behind now\">&ndash; (down)</td>",
                    human_bytes(*a),
                    human_bytes(*b)
                );
            }
            let behind = if *b == 0 {
                "<span class=\"up\">in step</span>".to_string()
            } else {
                format!("<span class=\"warn\">{}</span>", human_bytes(*b))
            };
            format!(
                "<td class=\"n\">{}</td><td class=\"n\">{behind}</td>",
                human_bytes(*a)
            )
        }
        Progress::SharedLog {
            unknown_because, ..
        } => format!(
            "<td class=\"n muted\" colspan=\"2\" title=\"{}\">unknown</td>",
            escape(unknown_because.as_deref().unwrap_or(""))
        ),
        Progress::Raft {
            role,
            term,
            index,
            behind_entries,
            ..
        } => {
            let behind = match behind_entries {
                Some(0) => "<span class=\"up\">in step</span>".to_string(),
                Some(b) => format!("<span class=\"warn\">{b} entries</span>"),
                None => "<span class=\"muted\">unknown</span>".to_string(),
            };
            let index = index.map_or("&ndash;".to_string(), |i| format!("index {i}"));
            let muted = if reachable { "" } else { " muted" };
            format!(
                "<td class=\"n{muted}\">{} (term {term}) &middot; {index}</td>\
                 <td class=\"n{muted}\">{behind}</td>",
                escape(role)
            )
        }
    }
}

fn totals(o: &mut String, s: &Status) {
    let t = &s.totals;
    o.push_str("<section id=\"totals\"><div class=\"cards\">");
    for (n, label) in [
        (t.users, "users"),
        (t.groups, "groups"),
        (t.group_members, "members"),
        (t.pending_join_requests, "pending requests"),
        (t.files, "files"),
        (t.seeders_online, "seeders online"),
    ] {
        let _ = write!(
            o,
            "<div class=\"card\"><b>{n}</b><span>{label}</span></div>"
        );
    }
    o.push_str("</div></section>");
}

fn groups(o: &mut String, s: &Status) {
    o.push_str("<section id=\"groups\"><h2>Groups</h2>");
    if s.groups.is_empty() {
        o.push_str("<p class=\"muted\">No groups yet.</p></section>");
        return;
    }
    o.push_str(
        "<table><tr><th>Group</th><th>Owner</th><th class=\"n\">Members</th>\
         <th class=\"n\">Files</th><th class=\"n\">Pending requests</th></tr>",
    );
    for g in &s.groups {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&g.name),
            escape(&g.owner),
            g.members,
            g.files,
            g.pending_join_requests
        );
    }
    o.push_str("</table>");
    if s.totals.groups > s.groups.len() as u64 {
        let _ = write!(
            o,
            "<p class=\"muted\">The {} biggest of {} groups.</p>",
            s.groups.len(),
            s.totals.groups
        );
    }
    o.push_str("</section>");
}

fn swarms(o: &mut String, s: &Status) {
    o.push_str("<section id=\"swarms\"><h2>Busiest swarms</h2>");
    if s.busiest_swarms.is_empty() {
        o.push_str("<p class=\"muted\">No file has a seeder online.</p></section>");
        return;
    }
    let addrs = s.peer_addrs_shown;
    let _ = write!(
        o,
        "<table><tr><th>File</th><th>Group</th><th class=\"n\">Size</th>\
         <th class=\"n\">Seeders online</th><th class=\"n\">Partial</th>{}</tr>",
        if addrs { "<th>Seeders</th>" } else { "" }
    );
    for w in &s.busiest_swarms {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td>",
            escape(&w.file),
            escape(&w.group),
            human_bytes(w.size_bytes),
            w.seeders_online,
            w.partial_seeders_online
        );
        if let Some(list) = &w.seeder_addrs {
            let _ = write!(o, "<td><code>{}</code></td>", escape(&list.join(", ")));
        }
        o.push_str("</tr>");
    }
    o.push_str(
        "</table><p class=\"muted\">Partial: downloads that serve the pieces they \
         already have.</p></section>",
    );
}

fn changes(o: &mut String, s: &Status) {
    o.push_str("<section id=\"changes\"><h2>Recent changes</h2>");
    if s.recent_changes.is_empty() {
        o.push_str("<p class=\"muted\">No changes in the log's tail.</p></section>");
        return;
    }
    o.push_str("<table><tr><th>When</th><th>Tracker</th><th>What</th></tr>");
    for c in &s.recent_changes {
        let _ = write!(
            o,
            "<tr><td class=\"muted\" title=\"{}\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            utc(c.unix_ms),
            ago(s.generated_unix_ms.saturating_sub(c.unix_ms)),
            c.tracker,
            escape(&c.text)
        );
    }
    o.push_str("</table><p class=\"muted\">Newest first; heartbeats are not listed.</p></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ChangeView, GroupView, SwarmView, Totals};

    fn status() -> Status {
        Status {
            tracker: 2,
            replication: "shared-log",
            generated_unix_ms: 1_764_550_923_000,
            log_bytes: 4096,
            trackers: vec![TrackerView {
                no: 1,
                addr: "127.0.0.1:7001".into(),
                this: false,
                reachable: false,
                progress: Progress::SharedLog {
                    applied_offset: None,
                    behind_bytes: None,
                    unknown_because: Some("no cache <here>".into()),
                },
            }],
            totals: Totals {
                groups: 1,
                ..Default::default()
            },
            groups: vec![GroupView {
                name: "<script>alert(1)</script>".into(),
                owner: "o&o".into(),
                members: 3,
                files: 1,
                pending_join_requests: 0,
            }],
            busiest_swarms: vec![SwarmView {
                group: "g".into(),
                file: "a\"b'.txt".into(),
                size_bytes: 1,
                seeders_online: 2,
                partial_seeders_online: 1,
                seeder_addrs: None,
            }],
            recent_changes: vec![ChangeView {
                unix_ms: 0,
                tracker: 1,
                text: "<b>".into(),
            }],
            peer_addrs_shown: false,
        }
    }

    #[test]
    fn user_names_are_escaped_and_the_page_refreshes() {
        let page = render(&status());
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("o&amp;o"));
        assert!(page.contains("a&quot;b&#39;.txt"));
        assert!(page.contains("&lt;b&gt;") && !page.contains("<td><b>"));
        assert!(page.contains("no cache &lt;here&gt;"));
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("1 of 1 unreachable"));
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_550_923_999), "2025-12-01 01:02:03 UTC");
        assert_eq!(ago(999), "just now");
        assert_eq!(ago(61_000), "61 s ago");
        assert_eq!(ago(3_600_000), "60 min ago");
        assert_eq!(ago(3 * 86_400_000), "3 d ago");
    }
}
