//! Download tickets: a tracker's signed statement that a user, as a current
//! member of a group, may fetch one file, bound to the Ed25519 key the downloader
//! holds, until an expiry. Seeders check a ticket offline, with the trackers'
//! public key pinned at login, and check that the downloader holds the ticket's
//! key by having it sign a fresh challenge of the connection
//! ([`challenge_message`]).
//!
//! # Encoding
//!
//! ```text
//! ticket   = postcard(TicketBody) ++ signature (64 bytes)
//! signed   = "swarmshare-ticket-v1\0" ++ postcard(TicketBody)
//! text     = lowercase hex of the ticket (a `file_info` reply field)
//! ```
//!
//! A ticket is at most [`MAX_TICKET_LEN`] bytes (user and group names are at
//! most 256 bytes each on the tracker). Decoding never panics: anything
//! malformed, too long or with trailing bytes is a [`TicketError`].

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

pub use ed25519_dalek::{SigningKey as KeyPair, VerifyingKey as PublicKey};

/// The largest encoded ticket in bytes.
pub const MAX_TICKET_LEN: usize = 1024;
/// Length of an Ed25519 signature.
pub const SIG_LEN: usize = 64;
/// Length of a peer handshake challenge.
pub const CHALLENGE_LEN: usize = 32;

const TICKET_CONTEXT: &[u8] = b"swarmshare-ticket-v1\0";
const CHALLENGE_CONTEXT: &[u8] = b"swarmshare-peer-auth-v3\0";

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketBody {
    pub user: String,
    pub group: String,
    pub file_sha1: [u8; 20],
    /// The downloader's Ed25519 public key.
    pub holder: [u8; 32],
    /// Unix seconds after which the ticket is void.
    pub expires: u64,
}

/// A signed ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub body: TicketBody,
    pub sig: [u8; SIG_LEN],
}

/// Why a ticket or a challenge answer is refused. `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("malformed ticket")]
    Malformed,
    #[error("ticket too long")]
    TooLong,
    #[error("ticket not signed by the trackers")]
    BadSignature,
    #[error("ticket expired")]
    Expired,
    #[error("ticket is for another file")]
    WrongFile,
    #[error("the downloader does not hold the ticket's key")]
    WrongHolder,
    #[error("malformed key")]
    BadKey,
}

/// A new random key pair (from the operating system's random source).
pub fn new_key_pair() -> std::io::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A fresh random challenge.
pub fn new_challenge() -> std::io::Result<[u8; CHALLENGE_LEN]> {
    let mut c = [0u8; CHALLENGE_LEN];
    getrandom::getrandom(&mut c).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(c)
}

/// A public key from its 64-hex-character text form.
pub fn public_key_from_hex(text: &str) -> Result<VerifyingKey, TicketError> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(text, &mut b).map_err(|_| TicketError::BadKey)?;
    VerifyingKey::from_bytes(&b).map_err(|_| TicketError::BadKey)
}

/// A public key as 64 lowercase hex characters.
pub fn public_key_hex(key: &VerifyingKey) -> String {
    hex::encode(key.as_bytes())
}

impl TicketBody {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut m = TICKET_CONTEXT.to_vec();
        // Strings, arrays and an integer into a Vec: cannot fail.
        if let Ok(v) = postcard::to_extend(self, std::mem::take(&mut m)) {
            m = v;
        }
        m
    }

    /// Signs this body with a tracker's key.
    pub fn sign(self, tracker: &SigningKey) -> Ticket {
        let sig = tracker.sign(&self.signed_bytes()).to_bytes();
        Ticket { body: self, sig }
    }
}

impl Ticket {
    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_allocvec(&self.body).unwrap_or_default();
        out.extend_from_slice(&self.sig);
        out
    }

    /// Decodes the binary form; every byte must be used.
    pub fn decode(bytes: &[u8]) -> Result<Ticket, TicketError> {
        if bytes.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        let (body, rest) =
            postcard::take_from_bytes::<TicketBody>(bytes).map_err(|_| TicketError::Malformed)?;
        let sig: [u8; SIG_LEN] = rest.try_into().map_err(|_| TicketError::Malformed)?;
        Ok(Ticket { body, sig })
    }

    /// The text form (hex).
    pub fn to_hex(&self) -> String {
        hex::encode(self.encode())
    }

    /// Decodes the text form.
    pub fn from_hex(text: &str) -> Result<Ticket, TicketError> {
        if text.len() > 2 * MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        Ticket::decode(&hex::decode(text).map_err(|_| TicketError::Malformed)?)
    }

    /// Checks the trackers' signature and that the ticket has not expired at
    /// `now` (unix seconds).
    pub fn verify(&self, tracker: &VerifyingKey, now: u64) -> Result<(), TicketError> {
        let sig = Signature::from_bytes(&self.sig);
        tracker
            .verify(&self.body.signed_bytes(), &sig)
            .map_err(|_| TicketError::BadSignature)?;
        if now > self.body.expires {
            return Err(TicketError::Expired);
        }
        Ok(())
    }
}

/// What a downloader signs to answer a seeder's challenge: the challenge and the
/// connection's context (file and both peer ids), so an answer seen on one
/// connection is worth nothing on another.
pub fn challenge_message(
    challenge: &[u8; CHALLENGE_LEN],
    file_sha1: &[u8; 20],
    server_id: &[u8; 8],
    client_id: &[u8; 8],
) -> Vec<u8> {
    let mut m = CHALLENGE_CONTEXT.to_vec();
    m.extend_from_slice(challenge);
    m.extend_from_slice(file_sha1);
    m.extend_from_slice(server_id);
    m.extend_from_slice(client_id);
    m
}

/// Signs a challenge answer with the downloader's key.
pub fn sign_challenge(key: &SigningKey, message: &[u8]) -> [u8; SIG_LEN] {
    key.sign(message).to_bytes()
}

/// A seeder's whole check of a downloader's answer: the ticket is the trackers',
/// unexpired, for `file_sha1`, and `sig` over `message` is by the ticket's key.
pub fn check_answer(
    ticket: &Ticket,
    sig: &[u8; SIG_LEN],
    message: &[u8],
    tracker: &VerifyingKey,
    file_sha1: &[u8; 20],
    now: u64,
) -> Result<(), TicketError> {
    ticket.verify(tracker, now)?;
    if ticket.body.file_sha1 != *file_sha1 {
        return Err(TicketError::WrongFile);
    }
    let holder = VerifyingKey::from_bytes(&ticket.body.holder).map_err(|_| TicketError::BadKey)?;
    holder
        .verify(message, &Signature::from_bytes(sig))
        .map_err(|_| TicketError::WrongHolder)
}

/// The current time in unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(holder: &SigningKey, expires: u64) -> TicketBody {
        TicketBody {
            user: "alice".into(),
            group: "g".into(),
            file_sha1: [7; 20],
            holder: holder.verifying_key().to_bytes(),
            expires,
        }
    }

    #[test]
    fn sign_verify_roundtrip_and_answer() {
        let tracker = new_key_pair().unwrap();
        let me = new_key_pair().unwrap();
        let t = body(&me, 1000).sign(&tracker);
        let back = Ticket::from_hex(&t.to_hex()).unwrap();
        assert_eq!(back, t);
        back.verify(&tracker.verifying_key(), 999).unwrap();
        let msg = challenge_message(&[1; 32], &[7; 20], b"server00", b"client00");
        let sig = sign_challenge(&me, &msg);
        let tk = tracker.verifying_key();
        check_answer(&back, &sig, &msg, &tk, &[7; 20], 1000).unwrap();
        assert_eq!(
            check_answer(&back, &sig, &msg, &tk, &[8; 20], 1000),
            Err(TicketError::WrongFile)
        );
    }

    #[test]
    fn expiry_tamper_other_tracker_other_holder() {
        let tracker = new_key_pair().unwrap();
        let tk = tracker.verifying_key();
        let me = new_key_pair().unwrap();
        let t = body(&me, 1000).sign(&tracker);
        assert_eq!(t.verify(&tk, 1001), Err(TicketError::Expired));
        let mut forged = t.clone();
        forged.body.group = "other".into();
        assert_eq!(forged.verify(&tk, 0), Err(TicketError::BadSignature));
        let mut longer = t.clone();
        longer.body.expires = u64::MAX;
        assert_eq!(longer.verify(&tk, 0), Err(TicketError::BadSignature));
        let other = new_key_pair().unwrap();
        assert_eq!(
            t.verify(&other.verifying_key(), 0),
            Err(TicketError::BadSignature)
        );
        // A thief replaying the ticket signs with its own key: refused.
        let thief = new_key_pair().unwrap();
        let msg = challenge_message(&[1; 32], &[7; 20], b"server00", b"client00");
        let sig = sign_challenge(&thief, &msg);
        assert_eq!(
            check_answer(&t, &sig, &msg, &tk, &[7; 20], 0),
            Err(TicketError::WrongHolder)
        );
        // The holder's answer on another connection (other challenge) is refused.
        let sig = sign_challenge(&me, &msg);
        let msg2 = challenge_message(&[2; 32], &[7; 20], b"server00", b"client00");
        assert_eq!(
            check_answer(&t, &sig, &msg2, &tk, &[7; 20], 0),
            Err(TicketError::WrongHolder)
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(Ticket::decode(&[]), Err(TicketError::Malformed));
        assert_eq!(
            Ticket::decode(&[0; MAX_TICKET_LEN + 1]),
            Err(TicketError::TooLong)
        );
        assert!(Ticket::from_hex("zz").is_err());
        let t = body(&new_key_pair().unwrap(), 5).sign(&new_key_pair().unwrap());
        let mut b = t.encode();
        b.push(0);
        assert_eq!(Ticket::decode(&b), Err(TicketError::Malformed));
        assert!(public_key_from_hex("00").is_err());
    }
}
