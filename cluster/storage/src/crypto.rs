//! Encryption at rest of single values: AES-256-GCM envelopes with keys from pass phrases.
//!
//! Envelope (format 1): `0x01 | key_id[8] | nonce[12] | ciphertext | tag[16]`.
//! - The key is PBKDF2-HMAC-SHA256(pass phrase, fixed salt, iterations), or HKDF-SHA256 of a key
//!   file's bytes. The salt is fixed so that every node of a cluster derives the same key from
//!   the same phrase (replicas carry envelopes, not plaintext).
//! - `key_id` is the first 8 bytes of SHA-256 over the key: it tells which registered phrase
//!   opens a value, without revealing anything usable about the key.
//! - The additional authenticated data binds a value to its key (or queue name), so an envelope
//!   moved to another key fails to open; a wrong phrase fails the tag check. Either way the
//!   caller gets [`Error::BadPassPhrase`], never garbage.
//! - Nonces are 96 random bits from OpenSSL's CSPRNG.

use std::collections::HashMap;
use std::sync::Arc;

use openssl::hash::{MessageDigest, hash};
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use parking_lot::Mutex;

use crate::error::{Error, Result};

const ENVELOPE_VERSION: u8 = 1;
const SALT: &[u8] = b"k2hdkc-storage-v1/pbkdf2";
const HKDF_INFO: &[u8] = b"k2hdkc-storage-v1/value-key";
const OVERHEAD: usize = 1 + 8 + 12 + 16;
/// Derived keys of per-request phrases kept to avoid re-running PBKDF2.
const CACHE_MAX: usize = 1024;

/// A 256-bit value key.
#[derive(Clone)]
pub struct ValueKey {
    id: [u8; 8],
    key: [u8; 32],
}

impl std::fmt::Debug for ValueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueKey({})", crate::change::hex(&self.id))
    }
}

impl ValueKey {
    fn from_key(key: [u8; 32]) -> Result<ValueKey> {
        let d = hash(MessageDigest::sha256(), &key)?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        Ok(ValueKey { id, key })
    }

    /// Derive from a pass phrase with PBKDF2-HMAC-SHA256.
    pub fn from_phrase(phrase: &[u8], iterations: u32) -> Result<ValueKey> {
        let mut key = [0u8; 32];
        openssl::pkcs5::pbkdf2_hmac(
            phrase,
            SALT,
            iterations as usize,
            MessageDigest::sha256(),
            &mut key,
        )?;
        ValueKey::from_key(key)
    }

    /// Derive from high-entropy key material (a key file) with HKDF-SHA256.
    pub fn from_key_material(ikm: &[u8]) -> Result<ValueKey> {
        use openssl::pkey::Id;
        use openssl::pkey_ctx::PkeyCtx;
        if ikm.len() < 16 {
            return Err(Error::InvalidArgument(
                "key file holds fewer than 16 bytes".into(),
            ));
        }
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(openssl::md::Md::sha256())?;
        ctx.set_hkdf_key(ikm)?;
        ctx.set_hkdf_salt(SALT)?;
        ctx.add_hkdf_info(HKDF_INFO)?;
        let mut key = [0u8; 32];
        ctx.derive(Some(&mut key))?;
        ValueKey::from_key(key)
    }

    /// Identifier stored in envelopes.
    pub fn id(&self) -> [u8; 8] {
        self.id
    }
}

/// Encrypt `plain` for a record or queue identified by `aad`.
pub fn seal(key: &ValueKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce)?;
    let mut tag = [0u8; 16];
    let ct = encrypt_aead(
        Cipher::aes_256_gcm(),
        &key.key,
        Some(&nonce),
        aad,
        plain,
        &mut tag,
    )?;
    let mut out = Vec::with_capacity(OVERHEAD + ct.len());
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The key id of an envelope.
pub fn envelope_key_id(env: &[u8]) -> Result<[u8; 8]> {
    if env.len() < OVERHEAD || env[0] != ENVELOPE_VERSION {
        return Err(Error::Corrupt("not an encryption envelope".into()));
    }
    Ok(env[1..9].try_into().expect("8"))
}

/// Decrypt an envelope with `key`; a wrong key or a moved envelope is [`Error::BadPassPhrase`].
pub fn open(key: &ValueKey, aad: &[u8], env: &[u8]) -> Result<Vec<u8>> {
    if envelope_key_id(env)? != key.id {
        return Err(Error::BadPassPhrase);
    }
    let nonce = &env[9..21];
    let (ct, tag) = env[21..].split_at(env.len() - 21 - 16);
    decrypt_aead(Cipher::aes_256_gcm(), &key.key, Some(nonce), aad, ct, tag)
        .map_err(|_| Error::BadPassPhrase)
}

/// The registered keys of a store, one of them optionally the default.
pub struct Keyring {
    keys: Vec<Arc<ValueKey>>,
    default: Option<usize>,
    iterations: u32,
    cache: Mutex<HashMap<[u8; 32], Arc<ValueKey>>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .field("default", &self.default)
            .finish()
    }
}

/// How to build a [`Keyring`].
#[derive(Debug, Clone, Default)]
pub struct KeyringConfig {
    /// Registered pass phrases.
    pub phrases: Vec<String>,
    /// Registered key files' contents.
    pub key_material: Vec<Vec<u8>>,
    /// Index into `phrases` then `key_material` of the default key, used to encrypt writes
    /// that ask for encryption without a phrase of their own.
    pub default: Option<usize>,
    /// PBKDF2 iterations (at least 1,000; default 210,000).
    pub iterations: Option<u32>,
}

impl Keyring {
    /// Derive every registered key.
    pub fn new(cfg: &KeyringConfig) -> Result<Keyring> {
        let iterations = cfg.iterations.unwrap_or(210_000);
        if iterations < 1000 {
            return Err(Error::InvalidArgument(
                "PBKDF2 iterations must be at least 1000".into(),
            ));
        }
        let mut keys = Vec::new();
        for p in &cfg.phrases {
            if p.is_empty() {
                return Err(Error::InvalidArgument("empty pass phrase".into()));
            }
            keys.push(Arc::new(ValueKey::from_phrase(p.as_bytes(), iterations)?));
        }
        for m in &cfg.key_material {
            keys.push(Arc::new(ValueKey::from_key_material(m)?));
        }
        if let Some(d) = cfg.default
            && d >= keys.len()
        {
            return Err(Error::InvalidArgument(format!(
                "default key {d} is not registered"
            )));
        }
        Ok(Keyring {
            keys,
            default: cfg.default,
            iterations,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The default key.
    pub fn default_key(&self) -> Option<Arc<ValueKey>> {
        self.default.map(|i| self.keys[i].clone())
    }

    /// Whether any key is registered.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of a per-request pass phrase (derived once, then cached).
    pub fn for_phrase(&self, phrase: &[u8]) -> Result<Arc<ValueKey>> {
        if phrase.is_empty() {
            return Err(Error::InvalidArgument("empty pass phrase".into()));
        }
        let d: [u8; 32] = hash(MessageDigest::sha256(), phrase)?
            .as_ref()
            .try_into()
            .expect("32");
        if let Some(k) = self.cache.lock().get(&d) {
            return Ok(k.clone());
        }
        let k = Arc::new(ValueKey::from_phrase(phrase, self.iterations)?);
        let mut c = self.cache.lock();
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(d, k.clone());
        Ok(k)
    }

    /// The key that opens `env`: the per-request phrase if given, else a registered key.
    pub fn key_for(&self, env: &[u8], phrase: Option<&[u8]>) -> Result<Arc<ValueKey>> {
        let id = envelope_key_id(env)?;
        if let Some(p) = phrase {
            let k = self.for_phrase(p)?;
            return if k.id == id {
                Ok(k)
            } else {
                Err(Error::BadPassPhrase)
            };
        }
        self.keys
            .iter()
            .find(|k| k.id == id)
            .cloned()
            .ok_or(Error::BadPassPhrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_refusals() {
        let ring = Keyring::new(&KeyringConfig {
            phrases: vec!["one".into(), "two".into()],
            default: Some(1),
            iterations: Some(1000),
            ..Default::default()
        })
        .unwrap();
        let k = ring.default_key().unwrap();
        let env = seal(&k, b"key", b"secret").unwrap();
        assert_eq!(env.len(), 6 + OVERHEAD);
        let k2 = ring.key_for(&env, None).unwrap();
        assert_eq!(open(&k2, b"key", &env).unwrap(), b"secret");
        // Moved to another key: refused.
        assert!(matches!(
            open(&k2, b"other", &env),
            Err(Error::BadPassPhrase)
        ));
        // Right phrase given per request; wrong phrase refused.
        assert!(ring.key_for(&env, Some(b"two")).is_ok());
        assert!(matches!(
            ring.key_for(&env, Some(b"one")),
            Err(Error::BadPassPhrase)
        ));
        // Tampered ciphertext refused.
        let mut bad = env.clone();
        let n = bad.len();
        bad[n - 20] ^= 1;
        assert!(matches!(open(&k2, b"key", &bad), Err(Error::BadPassPhrase)));
        // Unknown key id with no phrase.
        let other = Keyring::new(&KeyringConfig {
            iterations: Some(1000),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            other.key_for(&env, None),
            Err(Error::BadPassPhrase)
        ));
        assert!(ValueKey::from_key_material(b"short").is_err());
        let a = ValueKey::from_key_material(&[7u8; 32]).unwrap();
        let b = ValueKey::from_key_material(&[7u8; 32]).unwrap();
        assert_eq!(a.id(), b.id());
    }
}
