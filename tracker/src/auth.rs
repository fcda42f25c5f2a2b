//! Password hashing (argon2id, PHC strings) and session tokens.
//!
//! Only the PHC string of a password and the SHA-256 of a token are ever stored
//! or logged.

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};

/// Errors of hashing or token generation.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Memory of a new hash in KiB (19 MiB) and its passes: OWASP's argon2id minimum.
/// Hashes made with other parameters still verify: a PHC string carries its own.
pub const ARGON2_M_KIB: u32 = 19 * 1024;
pub const ARGON2_T: u32 = 2;

/// The most memory a stored PHC string may ask for (KiB); more is refused.
pub const MAX_M_KIB: u32 = 256 * 1024;

/// [`ARGON2_M_KIB`], [`ARGON2_T`], one lane.
fn params() -> Result<Params, AuthError> {
    Params::new(ARGON2_M_KIB, ARGON2_T, 1, None).map_err(|e| AuthError::Hash(e.to_string()))
}

/// Argon2's working memory, kept and reused by one thread (each login pool
/// worker has one, [`crate::login_pool`]; argon2 never runs on the event loop).
///
/// Why: `argon2`'s own `hash_password` allocates a fresh 19 MiB, 64-byte-aligned
/// buffer per hash, and glibc's heaps fragmented under that: a tracker grew to
/// 280 MiB after 40 logins one at a time and 425 MiB after 25 at once. Reused,
/// the pool holds threads x 19 MiB (BENCHMARKS.md, "argon2 memory").
#[derive(Default)]
pub struct Argon2Memory {
    blocks: Vec<Block>,
}

impl Argon2Memory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        let n = params.block_count();
        if self.blocks.len() < n {
            self.blocks = Vec::new(); // free the old buffer before the new one
            self.blocks = vec![Block::default(); n];
        }
        &mut self.blocks[..n]
    }

    /// Hashes a password into a PHC string with a fresh random salt.
    pub fn hash(&mut self, password: &str) -> Result<String, AuthError> {
        let err = |e: &dyn std::fmt::Display| AuthError::Hash(e.to_string());
        let salt = random_bytes::<16>()?;
        let params = params()?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                &salt,
                &mut out,
                self.blocks(&params),
            )
            .map_err(|e| err(&e))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| err(&e))?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|e| err(&e))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| err(&e))?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the stored PHC string (false for a malformed
    /// one, or one asking for more than [`MAX_M_KIB`]). The hashes compare in
    /// constant time (`Output`'s equality).
    pub fn verify(&mut self, password: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Ok(algorithm), Ok(params)) = (
            Algorithm::try_from(parsed.algorithm),
            Params::try_from(&parsed),
        ) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        if params.m_cost() > MAX_M_KIB {
            return false;
        }
        let mut out = vec![0u8; expected.len()];
        let hashed = Argon2::new(algorithm, version, params.clone())
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                self.blocks(&params),
            );
        hashed.is_ok() && Output::new(&out).is_ok_and(|o| o == expected)
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(b)
}

/// A PHC string with the current parameters that no password matches in
/// practice (a fixed salt and an all-zero hash). Verifying a login of an
/// unknown user against it costs as much as a wrong password, without hashing
/// anything at start.
pub fn unknown_user_phc() -> String {
    let salt = "AAAAAAAAAAAAAAAAAAAAAA"; // 16 zero bytes, B64 without padding
    let hash = "A".repeat(43); // 32 zero bytes
    format!("$argon2id$v=19$m={ARGON2_M_KIB},t={ARGON2_T},p=1${salt}${hash}")
}

/// Hashes a password into a PHC string with a fresh random salt (with memory of
/// its own; a thread that hashes often keeps an [`Argon2Memory`]).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2Memory::default().hash(password)
}

/// Whether `password` matches the stored PHC string (false for a malformed one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2Memory::default().verify(password, phc)
}

/// A new session token: 128 random bits as 32 lowercase hex characters.
pub fn new_token() -> Result<String, AuthError> {
    Ok(hex::encode(random_bytes::<16>()?))
}

/// The SHA-256 (hex) of a token: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    #[test]
    fn reused_memory_agrees_with_the_reference_and_does_not_grow() {
        let mut mem = Argon2Memory::default();
        let ours = mem.hash("pw one").unwrap();
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params().unwrap());
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference.verify_password(b"pw one", &parsed).is_ok());
        assert!(reference.verify_password(b"pw two", &parsed).is_err());
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let theirs = reference
            .hash_password(b"pw two", &salt)
            .unwrap()
            .to_string();
        assert!(mem.verify("pw two", &theirs));
        assert!(!mem.verify("pw one", &theirs));
        assert_eq!(
            mem.blocks.len(),
            ARGON2_M_KIB as usize,
            "one buffer, reused"
        );
        // A stored string asking for absurd memory is refused, not allocated.
        let greedy = theirs.replace("m=19456", &format!("m={}", MAX_M_KIB + 1));
        assert!(!mem.verify("pw two", &greedy));
        assert_eq!(mem.blocks.len(), ARGON2_M_KIB as usize);
    }

    #[test]
    fn passwords_verify_and_are_not_stored_in_clear() {
        let phc = hash_password("s3cret pass").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("s3cret"));
        assert!(verify_password("s3cret pass", &phc));
        assert!(!verify_password("wrong", &phc));
        assert!(!verify_password("x", "not a phc"));
        assert_ne!(hash_password("s3cret pass").unwrap(), phc);
    }

    #[test]
    fn new_hashes_use_owasp_parameters_and_old_ones_still_verify() {
        let phc = hash_password("pw").unwrap();
        assert!(phc.contains("m=19456,t=2,p=1"), "{phc}");
        let old_params = Params::new(8192, 1, 1, None).unwrap();
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, old_params);
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let old_phc = old.hash_password(b"pw", &salt).unwrap().to_string();
        assert!(old_phc.contains("m=8192,t=1"), "{old_phc}");
        assert!(verify_password("pw", &old_phc));
        assert!(!verify_password("px", &old_phc));
    }

    #[test]
    fn the_unknown_user_hash_has_the_current_parameters_and_matches_nothing() {
        let dummy = unknown_user_phc();
        let parsed = PasswordHash::new(&dummy).expect("a valid PHC string");
        let real = hash_password("pw").unwrap();
        let real = PasswordHash::new(&real).unwrap();
        assert_eq!(parsed.algorithm, real.algorithm);
        assert_eq!(parsed.params, real.params);
        assert_eq!(parsed.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        assert!(!verify_password("", &dummy));
        assert!(!verify_password("not a password: unknown users", &dummy));
    }

    #[test]
    fn tokens_are_random_hex_and_hashed() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
