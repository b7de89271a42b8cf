//! Secrets of the service: random tokens and their hashes (only hashes identify a token in
//! the database), password hashes (PBKDF2-HMAC-SHA256, salted), the sealing of values the
//! service must give back later (role tokens for the token list: AES-256-GCM under the
//! service key), and K2HR3's `registerpath` (AES-256-CBC, key PBKDF2-SHA512 of the pass phrase
//! with the IV as salt, IV prepended, base64, URL-encoded).

use openssl::hash::MessageDigest;
use openssl::symm::{Cipher, decrypt, decrypt_aead, encrypt, encrypt_aead};

/// Iterations of the password hash.
const PASSWORD_ITERATIONS: usize = 100_000;
/// Iterations of the registerpath key derivation (K2HR3's).
const REGISTERPATH_ITERATIONS: usize = 10_000;
/// Format tag of sealed values.
const SEAL_VERSION: u8 = 1;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).expect("the system random generator works");
    b
}

/// A new token: 32 random bytes as hex.
pub fn random_token() -> String {
    hex(&random_bytes(32))
}

/// The database key of a token.
pub fn hash_token(t: &str) -> String {
    hex(&openssl::sha::sha256(t.as_bytes()))
}

/// A well-formed hash no password matches in practice: checking an unknown user's password
/// against it costs what a real check costs.
pub const UNKNOWN_USER_HASH: &str = "pbkdf2-sha256$100000$00000000000000000000000000000000$0000000000000000000000000000000000000000000000000000000000000000";

/// A salted password hash `pbkdf2-sha256$ITER$SALT$HASH`.
pub fn hash_password(pw: &str) -> String {
    let salt = random_bytes(16);
    let mut out = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        pw.as_bytes(),
        &salt,
        PASSWORD_ITERATIONS,
        MessageDigest::sha256(),
        &mut out,
    )
    .expect("pbkdf2");
    format!(
        "pbkdf2-sha256${PASSWORD_ITERATIONS}${}${}",
        hex(&salt),
        hex(&out)
    )
}

/// Whether `pw` matches `stored` (constant time in the hash comparison).
pub fn verify_password(pw: &str, stored: &str) -> bool {
    let f: Vec<&str> = stored.split('$').collect();
    let (Some(iter), Some(salt), Some(want)) = (
        f.get(1).and_then(|s| s.parse::<usize>().ok()),
        f.get(2).and_then(|s| unhex(s)),
        f.get(3).and_then(|s| unhex(s)),
    ) else {
        return false;
    };
    if f[0] != "pbkdf2-sha256" || want.len() != 32 || iter == 0 {
        return false;
    }
    let mut out = [0u8; 32];
    if openssl::pkcs5::pbkdf2_hmac(
        pw.as_bytes(),
        &salt,
        iter,
        MessageDigest::sha256(),
        &mut out,
    )
    .is_err()
    {
        return false;
    }
    openssl::memcmp::eq(&out, &want)
}

/// The service key: seals values and derives the registerpath pass phrase.
#[derive(Clone)]
pub struct Keys {
    key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// From 32 bytes of key material.
    pub fn new(key: [u8; 32]) -> Keys {
        Keys { key }
    }

    /// Load the key file at `path`, or create it (mode 0600) with a random key.
    pub fn load_or_create(path: &std::path::Path) -> std::io::Result<Keys> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let b = unhex(text.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a 64-digit hex key", path.display()),
                    )
                })?;
            let mut key = [0u8; 32];
            key.copy_from_slice(&b);
            return Ok(Keys { key });
        }
        let b = random_bytes(32);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(hex(&b).as_bytes())?;
        f.sync_all()?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&b);
        Ok(Keys { key })
    }

    /// Seal `plain`: `v1.` + base64(nonce | ciphertext | tag), AES-256-GCM, bound to `aad`.
    pub fn seal(&self, plain: &str, aad: &str) -> String {
        let nonce = random_bytes(12);
        let mut tag = [0u8; 16];
        let mut ad = vec![SEAL_VERSION];
        ad.extend_from_slice(aad.as_bytes());
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.key,
            Some(&nonce),
            &ad,
            plain.as_bytes(),
            &mut tag,
        )
        .expect("AES-GCM");
        let mut all = nonce;
        all.extend_from_slice(&ct);
        all.extend_from_slice(&tag);
        format!("v{SEAL_VERSION}.{}", openssl::base64::encode_block(&all))
    }

    /// Open what [`Keys::seal`] made with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Option<String> {
        let b = openssl::base64::decode_block(sealed.strip_prefix("v1.")?).ok()?;
        if b.len() < 28 {
            return None;
        }
        let (nonce, rest) = b.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        let mut ad = vec![SEAL_VERSION];
        ad.extend_from_slice(aad.as_bytes());
        let p = decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(nonce), &ad, ct, tag).ok()?;
        String::from_utf8(p).ok()
    }

    /// The pass phrase of registerpaths (derived, so it never leaves the service).
    fn registerpath_passphrase(&self) -> Vec<u8> {
        let mut h = openssl::sha::Sha256::new();
        h.update(b"k2hr3-registerpath-v1");
        h.update(&self.key);
        hex(&h.finish()).into_bytes()
    }

    /// A registerpath for `json` (K2HR3's format), URL-safe.
    pub fn registerpath(&self, json: &str) -> String {
        let iv = random_bytes(16);
        let mut key = [0u8; 32];
        openssl::pkcs5::pbkdf2_hmac(
            &self.registerpath_passphrase(),
            &iv,
            REGISTERPATH_ITERATIONS,
            MessageDigest::sha512(),
            &mut key,
        )
        .expect("pbkdf2");
        let ct = encrypt(Cipher::aes_256_cbc(), &key, Some(&iv), json.as_bytes()).expect("AES-CBC");
        let mut all = iv;
        all.extend_from_slice(&ct);
        percent_encode(&openssl::base64::encode_block(&all))
    }

    /// The JSON inside a registerpath, if it is one of ours.
    pub fn open_registerpath(&self, path: &str) -> Option<String> {
        let b64 = percent_decode(path)?;
        let b = openssl::base64::decode_block(&b64).ok()?;
        if b.len() < 32 {
            return None;
        }
        let (iv, ct) = b.split_at(16);
        let mut key = [0u8; 32];
        openssl::pkcs5::pbkdf2_hmac(
            &self.registerpath_passphrase(),
            iv,
            REGISTERPATH_ITERATIONS,
            MessageDigest::sha512(),
            &mut key,
        )
        .ok()?;
        let p = decrypt(Cipher::aes_256_cbc(), &key, Some(iv), ct).ok()?;
        String::from_utf8(p).ok()
    }
}

/// `encodeURIComponent`.
pub fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Undo percent-encoding (also accepts plain text).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut o = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            o.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            o.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(o).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unknown_user_hash_costs_a_real_check() {
        let prefix = format!("pbkdf2-sha256${}$", super::PASSWORD_ITERATIONS);
        assert!(super::UNKNOWN_USER_HASH.starts_with(&prefix));
        assert!(!super::verify_password("", super::UNKNOWN_USER_HASH));
    }

    use super::*;

    #[test]
    fn passwords_tokens_seals_registerpaths() {
        let h = hash_password("s3cret");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cre", &h));
        assert!(!verify_password("s3cret", "garbage"));
        let t = random_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token());
        assert_eq!(hash_token(&t), hash_token(&t));
        let k = Keys::new([7u8; 32]);
        let s = k.seal("tok", "role-a");
        assert_eq!(k.open(&s, "role-a").as_deref(), Some("tok"));
        assert_eq!(k.open(&s, "role-b"), None);
        assert_eq!(Keys::new([8u8; 32]).open(&s, "role-a"), None);
        let rp = k.registerpath(r#"{"role":"yrn:yahoo:::t:role:r","token":"x"}"#);
        assert!(!rp.contains('/') && !rp.contains('+') && !rp.contains('='));
        assert_eq!(
            k.open_registerpath(&rp).as_deref(),
            Some(r#"{"role":"yrn:yahoo:::t:role:r","token":"x"}"#)
        );
        assert_eq!(Keys::new([9u8; 32]).open_registerpath(&rp), None);
        assert_eq!(k.open_registerpath("%zz"), None);
    }
}
