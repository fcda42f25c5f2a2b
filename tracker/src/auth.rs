//! Password hashing (argon2id, PHC strings) and session tokens.
//!
//! Only the PHC string of a password and the SHA-256 of a token are ever stored
//! or logged.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
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

/// Argon2id at [`ARGON2_M_KIB`], [`ARGON2_T`], one lane. Runs on the login
/// pool's threads ([`crate::login_pool`]), never on the event loop.
fn hasher() -> Result<Argon2<'static>, AuthError> {
    let params =
        Params::new(ARGON2_M_KIB, ARGON2_T, 1, None).map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
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

/// Hashes a password into a PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the stored PHC string (false for a malformed one).
pub fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let Ok(h) = hasher() else {
        return false;
    };
    h.verify_password(password.as_bytes(), &parsed).is_ok()
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
