//! The oslo.messaging 2.0 envelope as Trove uses it: decoding a call or cast (with secure RPC
//! when a key is set), encoding replies (`result`, `failure`, `ending`) and casts to the
//! conductor. Pure functions: the transports only move the bytes.
//!
//! Invariant: a message that cannot be decoded yields an error naming why; a call whose
//! method fails yields a reply with `failure` set in oslo's shape (`class`, `module`,
//! `message`, `tb`, `args`, `kwargs`), so a real taskmanager raises `RemoteError`.

use serde_json::{Map, Value, json};

use crate::secure::{Key, SecureError};

/// Envelope problems.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The body is not the 2.0 envelope.
    #[error("not an oslo.messaging 2.0 envelope: {0}")]
    Envelope(String),
    /// An encrypted argument could not be read.
    #[error("argument {arg}: {source}")]
    Arg {
        /// The argument name.
        arg: String,
        /// Why.
        source: SecureError,
    },
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The RPC method.
    pub method: String,
    /// Arguments, decrypted.
    pub args: Map<String, Value>,
    /// Target version (`1.0` .. `1.3`).
    pub version: String,
    /// Set for calls: where the reply goes.
    pub msg_id: Option<String>,
    /// The caller's reply queue (calls).
    pub reply_q: Option<String>,
    /// For deduplication.
    pub unique_id: Option<String>,
}

/// A method's failure, as oslo sends it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// Exception class name (`ValueError`, `NotImplementedError`, `GuestError` ...).
    pub class: String,
    /// Exception module.
    pub module: String,
    /// The message.
    pub message: String,
}

impl Failure {
    /// A failure of `class` (module `builtins`).
    pub fn new(class: &str, message: impl Into<String>) -> Failure {
        Failure {
            class: class.into(),
            module: "builtins".into(),
            message: message.into(),
        }
    }

    /// oslo's JSON string form.
    pub fn to_oslo(&self) -> String {
        json!({
            "class": self.class,
            "module": self.module,
            "message": self.message,
            "tb": [format!("{}: {}\n", self.class, self.message)],
            "args": [self.message],
            "kwargs": {},
        })
        .to_string()
    }
}

/// Decode an AMQP body (the JSON envelope) with the optional secure-RPC key.
pub fn decode(body: &[u8], key: Option<&Key>) -> Result<Request, EnvelopeError> {
    let env: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::Envelope(e.to_string()))?;
    if env["oslo.version"] != "2.0" {
        return Err(EnvelopeError::Envelope(format!(
            "oslo.version is {}",
            env["oslo.version"]
        )));
    }
    let inner = env["oslo.message"]
        .as_str()
        .ok_or_else(|| EnvelopeError::Envelope("no oslo.message string".into()))?;
    let m: Value =
        serde_json::from_str(inner).map_err(|e| EnvelopeError::Envelope(e.to_string()))?;
    let method = m["method"]
        .as_str()
        .ok_or_else(|| EnvelopeError::Envelope("no method".into()))?
        .to_string();
    let mut args = m["args"].as_object().cloned().unwrap_or_default();
    if let Some(k) = key {
        for (name, v) in args.iter_mut() {
            // Trove seals every value; a null stays null only when the caller sent none.
            if let Some(s) = v.as_str() {
                *v = k.open(s).map_err(|source| EnvelopeError::Arg {
                    arg: name.clone(),
                    source,
                })?;
            }
        }
    }
    let s = |k: &str| m[k].as_str().map(str::to_string);
    Ok(Request {
        method,
        args,
        version: s("version").unwrap_or_else(|| "1.0".into()),
        msg_id: s("_msg_id"),
        reply_q: s("_reply_q"),
        unique_id: s("_unique_id"),
    })
}

fn wrap(inner: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "oslo.version": "2.0", "oslo.message": inner.to_string() }))
        .expect("JSON serialises")
}

fn uuid_hex() -> String {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).expect("random");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The reply body for a call.
pub fn reply(msg_id: &str, outcome: &Result<Value, Failure>, key: Option<&Key>) -> Vec<u8> {
    let (result, failure) = match outcome {
        Ok(v) => (
            match key {
                Some(k) => Value::String(k.seal(v)),
                None => v.clone(),
            },
            Value::Null,
        ),
        Err(f) => (Value::Null, Value::String(f.to_oslo())),
    };
    wrap(&json!({
        "result": result,
        "failure": failure,
        "ending": true,
        "_msg_id": msg_id,
        "_unique_id": uuid_hex(),
    }))
}

/// A cast from this guest to the conductor (`heartbeat`, `update_backup`).
pub fn conductor_cast(
    method: &str,
    args: &Map<String, Value>,
    instance_id: &str,
    key: Option<&Key>,
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("method".into(), method.into());
    let a: Map<String, Value> = args
        .iter()
        .map(|(k, v)| {
            let v = match key {
                Some(key) => key.seal_for_conductor(v, instance_id),
                None => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    m.insert("args".into(), Value::Object(a));
    m.insert("version".into(), "1.0".into());
    m.insert("_unique_id".into(), uuid_hex().into());
    let ctx = json!({ "instance_id": instance_id, "is_admin": false, "request_id": format!("req-{}", uuid_hex()) });
    match key {
        Some(k) => {
            m.insert("_context_context".into(), k.seal(&ctx).into());
            m.insert("_context_csz-instance-id".into(), instance_id.into());
        }
        None => {
            for (ck, cv) in ctx.as_object().expect("object") {
                m.insert(format!("_context_{ck}"), cv.clone());
            }
        }
    }
    wrap(&Value::Object(m))
}

/// Seconds since the epoch with microseconds, strictly increasing within this process (the
/// conductor drops a message whose `sent` is not newer than the last).
pub fn sent_now() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next as f64 / 1e6,
            Err(p) => prev = p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    /// Every call Trove's own client code published decodes, with and without secure RPC, to
    /// the same method and arguments.
    #[test]
    fn trove_captures_decode_the_same_with_and_without_encryption() {
        let key = Key::new("Abcdefghijklmnopqrstuvwxyz012345");
        let sec = capture("rpc_capture.json");
        let plain = capture("rpc_capture_plain.json");
        let calls = |v: &Value, key: Option<&Key>| -> Vec<Request> {
            v["publishes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| {
                    p["exchange"] == "trove"
                        && p["routing_key"]
                            .as_str()
                            .unwrap()
                            .starts_with("guestagent.")
                })
                .map(|p| decode(p["body"].to_string().as_bytes(), key).unwrap())
                .collect()
        };
        let a = calls(&sec, Some(&key));
        let b = calls(&plain, None);
        assert_eq!(a.len(), b.len());
        assert!(a.len() >= 5, "{} calls", a.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.method, y.method);
            assert_eq!(x.args, y.args, "{}", x.method);
        }
        let prepare = a.iter().find(|r| r.method == "prepare").unwrap();
        assert!(prepare.args.contains_key("cluster_config"));
        assert!(prepare.msg_id.is_none(), "prepare is a cast");
        assert!(
            a.iter()
                .any(|r| r.method == "rpc_ping" && r.reply_q.is_some())
        );
        // A wrong key is an error that names the argument.
        let wrong = Key::new("wrong");
        let p = sec["publishes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["body"].to_string().contains("get_filesystem_stats"))
            .unwrap();
        let e = decode(p["body"].to_string().as_bytes(), Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("fs_path"), "{e}");
    }

    #[test]
    fn replies_and_conductor_casts_have_trove_shapes() {
        let key = Key::new("k");
        let r: Value = serde_json::from_slice(&reply("m1", &Ok(json!(true)), Some(&key))).unwrap();
        let inner: Value = serde_json::from_str(r["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["_msg_id"], "m1");
        assert_eq!(inner["ending"], true);
        assert_eq!(
            key.open(inner["result"].as_str().unwrap()).unwrap(),
            json!(true)
        );
        let f = reply(
            "m2",
            &Err(Failure::new("NotImplementedError", "nope")),
            None,
        );
        let inner: Value = serde_json::from_str(
            serde_json::from_slice::<Value>(&f).unwrap()["oslo.message"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let fail: Value = serde_json::from_str(inner["failure"].as_str().unwrap()).unwrap();
        assert_eq!(fail["class"], "NotImplementedError");
        assert_eq!(fail["message"], "nope");
        let mut args = Map::new();
        args.insert("instance_id".into(), "i1".into());
        args.insert("sent".into(), json!(sent_now()));
        let c: Value =
            serde_json::from_slice(&conductor_cast("heartbeat", &args, "i1", Some(&key))).unwrap();
        let inner: Value = serde_json::from_str(c["oslo.message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["_context_csz-instance-id"], "i1");
        let (v, id) = key.open_from_guest(&inner["args"]["instance_id"]).unwrap();
        assert_eq!((v, id.as_str()), (json!("i1"), "i1"));
        assert!(sent_now() < sent_now());
    }
}
