//! Trove's secure RPC serialisation (`trove/common/rpc/secure_serializer.py`): each argument
//! value, the context and the reply result travel as standard base64 of
//! `IV(16) || AES-256-CBC(PKCS#7(json))`, with the AES key being the ASCII hex MD5 of the
//! per-instance key string (32 bytes). Guest-to-conductor arguments are wrapped once more as a
//! JSON string `{"entity": <b64>, "csz-instance-id": <id>}` so the conductor can find the key.
//!
//! Invariant: `open(seal(v)) == v` for every JSON value; a wrong key or damaged text is an
//! error, never a panic.

use openssl::base64;
use openssl::hash::{MessageDigest, hash};
use openssl::symm::{Cipher, decrypt, encrypt};
use serde_json::Value;

/// Secure RPC failures.
#[derive(Debug, thiserror::Error)]
pub enum SecureError {
    /// Not base64, too short, or the wrong key (bad padding).
    #[error("secure RPC: cannot decrypt: {0}")]
    Decrypt(String),
    /// Decrypted, but not JSON.
    #[error("secure RPC: decrypted text is not JSON: {0}")]
    Json(String),
}

/// A per-instance key (Trove's `instance_rpc_encr_key`).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The AES key for the key string `s`: hex MD5 as ASCII bytes.
    pub fn new(s: &str) -> Key {
        let d = hash(MessageDigest::md5(), s.as_bytes()).expect("MD5 is available");
        let mut k = [0u8; 32];
        for (i, b) in d.iter().enumerate() {
            let hex = format!("{b:02x}");
            k[2 * i] = hex.as_bytes()[0];
            k[2 * i + 1] = hex.as_bytes()[1];
        }
        Key(k)
    }

    /// Encrypt one JSON value.
    pub fn seal(&self, v: &Value) -> String {
        let plain = serde_json::to_vec(v).expect("JSON values serialise");
        let mut iv = [0u8; 16];
        openssl::rand::rand_bytes(&mut iv).expect("random IV");
        let ct = encrypt(Cipher::aes_256_cbc(), &self.0, Some(&iv), &plain)
            .expect("AES-256-CBC encrypts any input");
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        base64::encode_block(&out)
    }

    /// Decrypt one value sealed by [`Key::seal`] (or by Trove).
    pub fn open(&self, text: &str) -> Result<Value, SecureError> {
        let raw =
            base64::decode_block(text.trim()).map_err(|e| SecureError::Decrypt(e.to_string()))?;
        if raw.len() < 32 || raw.len() % 16 != 0 {
            return Err(SecureError::Decrypt(format!(
                "{} bytes is not IV plus blocks",
                raw.len()
            )));
        }
        let plain = decrypt(Cipher::aes_256_cbc(), &self.0, Some(&raw[..16]), &raw[16..])
            .map_err(|_| SecureError::Decrypt("wrong key or damaged message".into()))?;
        serde_json::from_slice(&plain).map_err(|e| SecureError::Json(e.to_string()))
    }

    /// An argument for the conductor: the JSON string wrapping the sealed value and our id.
    pub fn seal_for_conductor(&self, v: &Value, instance_id: &str) -> Value {
        let inner = serde_json::json!({ "entity": self.seal(v), "csz-instance-id": instance_id });
        Value::String(inner.to_string())
    }

    /// The inverse of [`Key::seal_for_conductor`] (what the conductor does), for tests and the
    /// control plane's own conductor.
    pub fn open_from_guest(&self, v: &Value) -> Result<(Value, String), SecureError> {
        let s = v
            .as_str()
            .ok_or_else(|| SecureError::Json("a conductor argument is a JSON string".into()))?;
        let w: Value = serde_json::from_str(s).map_err(|e| SecureError::Json(e.to_string()))?;
        let entity = w["entity"]
            .as_str()
            .ok_or_else(|| SecureError::Json("no entity".into()))?;
        let id = w["csz-instance-id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok((self.open(entity)?, id))
    }
}

#[cfg(test)]
mod tests {
    use super::Key;
    use serde_json::json;

    #[test]
    fn sealed_values_open_and_wrong_keys_fail() {
        let k = Key::new("0123456789abcdef0123456789abcdef");
        for v in [
            json!(null),
            json!(true),
            json!({"fs_path": null}),
            json!([1, "x", 2.5]),
        ] {
            let s = k.seal(&v);
            assert_eq!(k.open(&s).unwrap(), v);
            // a fresh IV each time
            assert_ne!(s, k.seal(&v));
            assert!(Key::new("another key").open(&s).is_err());
        }
        assert!(k.open("not base64!").is_err());
        assert!(k.open("AAAA").is_err());
        let w = k.seal_for_conductor(&json!({"service_status": "healthy"}), "i-1");
        let (v, id) = k.open_from_guest(&w).unwrap();
        assert_eq!(v["service_status"], "healthy");
        assert_eq!(id, "i-1");
    }

    #[test]
    fn the_key_is_the_hex_md5_of_the_string() {
        // md5("abc") = 900150983cd24fb0d6963f7d28e17f72
        assert_eq!(&Key::new("abc").0, b"900150983cd24fb0d6963f7d28e17f72");
    }
}
