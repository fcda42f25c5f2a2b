//! Download tickets in the peer handshake (protocol version 4), both sides.
//!
//! Seeder: a valid handshake is answered with ours and a random `Challenge`;
//! the downloader's `Auth` (a ticket and its signature over the challenge, the
//! file and both peer ids) is checked offline against the trackers' pinned
//! keys ([`wire::ticket::check_answer`]): signed by a tracker, not expired, for
//! this file, and signed by the ticket's own key. Only then does the `Bitfield`
//! go out; anything else gets an `Error` and the connection closes, before any
//! piece. A later `Auth` on the same connection (a renewed ticket) is checked
//! the same way and moves the connection's expiry; a `Request` after the
//! expiry gets an `Error` and the connection closes.
//!
//! Downloader: the ticket from the download's last `file_info` answer is shown
//! when the server's challenge arrives, and shown again on every connection
//! whose ticket is within a third of its lifetime (at least 2 s) of expiring,
//! once the peer refresh brought a newer one.

use wire::peer_msg::{Handshake, PeerMsg};
use wire::ticket::{self, Ticket};

use super::Transfers;
use crate::fetch_peer::Disconnect;
use crate::peer_conn::{Role, ServeAuth, ServeState};

impl Transfers {
    /// Answers an acceptable handshake with ours and a fresh challenge.
    pub(super) fn send_challenge(&mut self, key: usize, h: &Handshake) {
        let challenge = match ticket::new_challenge() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("no random challenge: {e}");
                self.conns[key].send_error_and_close("internal error");
                return;
            }
        };
        let mut out = Handshake::new(h.file_sha1, self.peer_id).encode().to_vec();
        PeerMsg::Challenge(challenge).encode_into(&mut out);
        let conn = &mut self.conns[key];
        conn.role = Role::Serve(ServeState::AwaitAuth {
            file_sha1: h.file_sha1,
            auth: ServeAuth {
                challenge,
                client_id: h.peer_id,
                expires: 0,
            },
        });
        conn.send(out);
    }

    /// A downloader's `Auth`: the first one opens serving (the bitfield), a
    /// later one renews the connection's expiry; a bad one closes it.
    pub(super) fn on_auth(&mut self, key: usize, ticket: &[u8], sig: &[u8; 64]) {
        let (sha1, auth) = match &self.conns[key].role {
            Role::Serve(ServeState::AwaitAuth { file_sha1, auth })
            | Role::Serve(ServeState::Serving {
                file_sha1, auth, ..
            }) => (*file_sha1, auth.clone()),
            _ => {
                self.conns[key].send_error_and_close("auth before the handshake");
                return;
            }
        };
        let expires = match self.check_ticket(&sha1, &auth, ticket, sig) {
            Ok(e) => e,
            Err(why) => {
                log::info!("peer {} refused: {why}", self.conns[key].addr);
                let text = format!("no valid ticket: {why}");
                self.conns[key].send_error_and_close(&text);
                return;
            }
        };
        if let Role::Serve(ServeState::Serving { auth, .. }) = &mut self.conns[key].role {
            auth.expires = auth.expires.max(expires);
            return;
        }
        let bits = match self.source(&sha1) {
            None => {
                self.conns[key].send_error_and_close("unknown file");
                return;
            }
            Some((_, meta, None)) => wire::pieces::Bitfield::full(meta.piece_count()),
            Some((_, _, Some(dl))) => self.downloads[dl].bits(),
        };
        let conn = &mut self.conns[key];
        conn.role = Role::Serve(ServeState::Serving {
            file_sha1: sha1,
            pending_reads: 0,
            auth: ServeAuth { expires, ..auth },
            bitfield_stale: false,
        });
        conn.send_msg(&PeerMsg::Bitfield(bits.into_bytes()));
    }

    /// The whole offline check of an `Auth`; the ticket's expiry when it holds.
    fn check_ticket(
        &self,
        sha1: &[u8; 20],
        auth: &ServeAuth,
        ticket: &[u8],
        sig: &[u8; 64],
    ) -> Result<u64, String> {
        let t = Ticket::decode(ticket).map_err(|e| e.to_string())?;
        let msg = ticket::challenge_message(&auth.challenge, sha1, &self.peer_id, &auth.client_id);
        let now = ticket::unix_now();
        let mut why = "this peer has no tracker key pinned".to_string();
        for k in &self.tracker_keys {
            match ticket::check_answer(&t, sig, &msg, k, sha1, now) {
                Ok(()) if self.serves_in_group(sha1, &t.body.group) => return Ok(t.body.expires),
                Ok(()) => return Err(format!("ticket is for group {:?}", t.body.group)),
                Err(e) => why = e.to_string(),
            }
        }
        Err(why)
    }

    /// Whether this client shares (or downloads and serves) `sha1` in `group`: a
    /// ticket shows membership of one group, and the same content shared in
    /// another group is not served on it.
    fn serves_in_group(&self, sha1: &[u8; 20], group: &str) -> bool {
        let shared = self
            .shares
            .get(sha1)
            .is_some_and(|s| s.names.iter().any(|(g, _)| g == group));
        shared
            || self
                .downloads
                .iter()
                .any(|d| d.meta.file_sha1 == *sha1 && d.group == group)
    }

    /// Whether the serving connection may be sent a piece now: its ticket is in
    /// force. An expired one gets an `Error` and the connection closes.
    pub(super) fn ticket_in_force(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        match &conn.role {
            Role::Serve(ServeState::Serving { auth, .. }) if ticket::unix_now() <= auth.expires => {
                true
            }
            Role::Serve(ServeState::Serving { .. }) => {
                conn.send_error_and_close("ticket expired");
                false
            }
            _ => {
                conn.send_error_and_close("request before a valid ticket");
                false
            }
        }
    }

    /// The newest ticket of a download (hex from a `file_info` answer); an older
    /// or malformed one is ignored.
    pub(super) fn set_ticket(&mut self, dl: usize, hex: Option<&str>) {
        let Some(hex) = hex else {
            return;
        };
        let t = match Ticket::from_hex(hex) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("the tracker sent a bad ticket: {e}");
                return;
            }
        };
        let d = &mut self.downloads[dl];
        if d.ticket
            .as_ref()
            .is_none_or(|old| t.body.expires >= old.body.expires)
        {
            d.ticket = Some(t);
            d.ticket_got = ticket::unix_now();
        }
    }

    /// The server's challenge on a download connection: answered with `Auth`.
    pub(super) fn answer_challenge(&mut self, key: usize, dl: usize) -> Result<(), Disconnect> {
        let Some(t) = self.downloads[dl].ticket.clone() else {
            return Err(Disconnect::close("no ticket for this download"));
        };
        self.send_auth(key, dl, &t);
        Ok(())
    }

    fn send_auth(&mut self, key: usize, dl: usize, t: &Ticket) {
        let sha1 = self.downloads[dl].meta.file_sha1;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Role::Fetch(f) = &mut conn.role else {
            return;
        };
        let Some(challenge) = f.challenge else {
            return;
        };
        let msg = ticket::challenge_message(&challenge, &sha1, &f.server_id, &self.peer_id);
        let sig = ticket::sign_challenge(&self.key_pair, &msg);
        f.auth_expires = t.body.expires;
        conn.send_msg(&PeerMsg::Auth {
            ticket: t.encode(),
            sig,
        });
    }

    /// Shows a download's newer ticket on its connections whose ticket is about
    /// to expire (see the module doc).
    pub(super) fn renew_auth(&mut self, dl: usize) {
        let d = &self.downloads[dl];
        let Some(t) = d.ticket.clone() else {
            return;
        };
        let margin = (t.body.expires.saturating_sub(d.ticket_got) / 3).max(2);
        let now = ticket::unix_now();
        let keys: Vec<usize> = d.conn_keys().collect();
        for k in keys {
            let due = matches!(
                self.conns.get(k).map(|c| &c.role),
                Some(Role::Fetch(f)) if f.challenge.is_some()
                    && f.auth_expires < t.body.expires
                    && now + margin >= f.auth_expires
            );
            if due {
                self.send_auth(k, dl, &t);
            }
        }
    }
}
