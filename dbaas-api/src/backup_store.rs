//! Where backups are kept. Guests write their member archives (`<instance>.archive`) into the
//! backup's staging directory; a [`BackupStore`] then keeps them: [`LocalDir`] leaves them
//! there, [`S3`] uploads them (with a manifest) to an S3-compatible object store (AWS S3,
//! Ceph RGW, MinIO, Swift's S3 API) and removes the staging copy; a restore fetches them back.
//!
//! Invariants: a backup is COMPLETED only after `store` returned, so its archives are where
//! `locationRef` says; `fetch` and `delete` are idempotent; requests are signed with AWS
//! Signature Version 4 (checked against AWS's published example).

use std::path::Path;

use openssl::hash::{MessageDigest, hash};
use openssl::pkey::PKey;
use openssl::sign::Signer;
use serde::{Deserialize, Serialize};

use crate::compute::BoxFuture;
use crate::error::{TroveError, TroveResult};

/// The backup store seam.
pub trait BackupStore: Send + Sync {
    /// `local` or `s3`.
    fn name(&self) -> &'static str;
    /// Keep the archives of `staging`; returns the backup's `locationRef`.
    fn store<'a>(
        &'a self,
        backup_id: &'a str,
        staging: &'a Path,
    ) -> BoxFuture<'a, TroveResult<String>>;
    /// Put the archives of `backup_id` into `staging` (for a restore).
    fn fetch<'a>(&'a self, backup_id: &'a str, staging: &'a Path)
    -> BoxFuture<'a, TroveResult<()>>;
    /// Remove the backup everywhere (idempotent).
    fn delete<'a>(
        &'a self,
        backup_id: &'a str,
        staging: &'a Path,
    ) -> BoxFuture<'a, TroveResult<()>>;
}

fn io(p: &Path, e: std::io::Error) -> TroveError {
    TroveError::Internal(format!("{}: {e}", p.display()))
}

/// The archives a staging directory holds, sorted.
fn archives(staging: &Path) -> TroveResult<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(staging)
        .map_err(|e| io(staging, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".archive"))
        .collect();
    v.sort();
    Ok(v)
}

/// Backups in a directory of the control plane's host (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalDir;

impl BackupStore for LocalDir {
    fn name(&self) -> &'static str {
        "local"
    }

    fn store<'a>(&'a self, _id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<String>> {
        Box::pin(async move {
            if archives(staging)?.is_empty() {
                return Err(TroveError::Internal(format!(
                    "{}: no archive was written",
                    staging.display()
                )));
            }
            Ok(staging.display().to_string())
        })
    }

    fn fetch<'a>(&'a self, id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<()>> {
        Box::pin(async move {
            if archives(staging)?.is_empty() {
                return Err(TroveError::NotFound(format!(
                    "backup {id} has no archives in {}",
                    staging.display()
                )));
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, _id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<()>> {
        Box::pin(async move {
            if staging.exists() {
                std::fs::remove_dir_all(staging).map_err(|e| io(staging, e))?;
            }
            Ok(())
        })
    }
}

/// `[trove.backup_store]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupStoreConfig {
    /// `local` (the data directory's `backups/`) or `s3`.
    pub kind: String,
    /// s3: the endpoint, `https://s3.example.net` (path-style requests).
    pub endpoint: String,
    /// s3: the bucket (must exist).
    pub bucket: String,
    /// s3: the signing region.
    pub region: String,
    /// s3: the access key id.
    pub access_key: String,
    /// s3: file holding the secret key (not the key itself).
    pub secret_key_file: String,
    /// s3: key prefix for this control plane's backups.
    pub prefix: String,
}

impl Default for BackupStoreConfig {
    fn default() -> BackupStoreConfig {
        BackupStoreConfig {
            kind: "local".into(),
            endpoint: String::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            access_key: String::new(),
            secret_key_file: String::new(),
            prefix: "k2hdkc-backups/".into(),
        }
    }
}

impl BackupStoreConfig {
    /// Check before use.
    pub fn validate(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "local" => Ok(()),
            "s3" => {
                for (k, v) in [
                    ("endpoint", &self.endpoint),
                    ("bucket", &self.bucket),
                    ("access_key", &self.access_key),
                    ("secret_key_file", &self.secret_key_file),
                ] {
                    if v.is_empty() {
                        return Err(format!(
                            "trove.backup_store.{k} is required for kind = \"s3\""
                        ));
                    }
                }
                if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://"))
                {
                    return Err(format!(
                        "trove.backup_store.endpoint {:?}: want http(s)://host[:port]",
                        self.endpoint
                    ));
                }
                if !self
                    .bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                {
                    return Err(format!(
                        "trove.backup_store.bucket {:?} is not a valid bucket name",
                        self.bucket
                    ));
                }
                Ok(())
            }
            k => Err(format!("trove.backup_store.kind {k:?}: want local or s3")),
        }
    }

    /// The store this config names.
    pub fn open(&self) -> TroveResult<std::sync::Arc<dyn BackupStore>> {
        self.validate().map_err(TroveError::BadRequest)?;
        Ok(match self.kind.as_str() {
            "s3" => std::sync::Arc::new(S3::new(self.clone())?),
            _ => std::sync::Arc::new(LocalDir),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&hash(MessageDigest::sha256(), b).expect("SHA-256"))
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let k = PKey::hmac(key).expect("HMAC key");
    let mut s = Signer::new(MessageDigest::sha256(), &k).expect("HMAC");
    s.update(msg.as_bytes()).expect("HMAC update");
    s.sign_to_vec().expect("HMAC sign")
}

/// RFC 3986 encoding of one path segment (S3's canonical URI).
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The SigV4 `Authorization` header of an S3 request with no query string. `headers` are
/// the signed headers besides none: lower-case names, including `host`,
/// `x-amz-content-sha256` and `x-amz-date`.
pub fn sigv4(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    payload_sha: &str,
    access_key: &str,
    secret: &str,
    region: &str,
) -> String {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    h.sort();
    let amz_date = h
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let date = &amz_date[..amz_date.len().min(8)];
    let canonical_headers: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = h.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!("{method}\n{path}\n\n{canonical_headers}\n{signed}\n{payload_sha}");
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date);
    let k = hmac(&k, region);
    let k = hmac(&k, "s3");
    let k = hmac(&k, "aws4_request");
    let sig = hex(&hmac(&k, &to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed},Signature={sig}"
    )
}

/// An S3-compatible object store.
pub struct S3 {
    cfg: BackupStoreConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.cfg.endpoint)
            .field("bucket", &self.cfg.bucket)
            .finish()
    }
}

fn s3err(e: impl std::fmt::Display) -> TroveError {
    TroveError::Unavailable(format!("backup store: {e}"))
}

impl S3 {
    /// A client; the secret is read on each request (so it can be rotated).
    pub fn new(cfg: BackupStoreConfig) -> TroveResult<S3> {
        Ok(S3 {
            cfg,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(600))
                .build()
                .map_err(|e| TroveError::Internal(format!("HTTP client: {e}")))?,
        })
    }

    fn key(&self, id: &str, name: &str) -> String {
        format!("{}{id}/{name}", self.cfg.prefix)
    }

    async fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        body: Vec<u8>,
    ) -> TroveResult<(u16, Vec<u8>)> {
        let secret = std::fs::read_to_string(&self.cfg.secret_key_file)
            .map_err(|e| TroveError::Internal(format!("{}: {e}", self.cfg.secret_key_file)))?;
        let base = self.cfg.endpoint.trim_end_matches('/');
        let host = base
            .split_once("://")
            .map_or(base, |(_, h)| h)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let path = format!(
            "/{}/{}",
            uri_encode(&self.cfg.bucket),
            key.split('/').map(uri_encode).collect::<Vec<_>>().join("/")
        );
        let payload = sha256_hex(&body);
        let now = crate::model::iso(crate::store::now()).replace(['-', ':'], "") + "Z";
        let auth = sigv4(
            method.as_str(),
            &path,
            &[
                ("host", &host),
                ("x-amz-content-sha256", &payload),
                ("x-amz-date", &now),
            ],
            &payload,
            &self.cfg.access_key,
            secret.trim(),
            &self.cfg.region,
        );
        let r = self
            .http
            .request(method, format!("{base}{path}"))
            .header("x-amz-content-sha256", &payload)
            .header("x-amz-date", &now)
            .header("authorization", auth)
            .body(body)
            .send()
            .await
            .map_err(s3err)?;
        let code = r.status().as_u16();
        let bytes = r.bytes().await.map_err(s3err)?.to_vec();
        Ok((code, bytes))
    }

    /// CreateBucket's body: none in us-east-1, the location constraint elsewhere.
    fn bucket_body(&self) -> Vec<u8> {
        if self.cfg.region == "us-east-1" {
            return vec![];
        }
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            self.cfg.region
        )
        .into_bytes()
    }

    async fn manifest(&self, id: &str) -> TroveResult<Option<Vec<String>>> {
        let (code, body) = self
            .request(reqwest::Method::GET, &self.key(id, "manifest.json"), vec![])
            .await?;
        match code {
            200 => serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| serde_json::from_value(v["archives"].clone()).ok())
                .map(Some)
                .ok_or_else(|| s3err(format!("backup {id}: the manifest is damaged"))),
            404 => Ok(None),
            c => Err(s3err(format!(
                "reading the manifest of {id}: HTTP {c}: {}",
                String::from_utf8_lossy(&body)
            ))),
        }
    }
}

impl BackupStore for S3 {
    fn name(&self) -> &'static str {
        "s3"
    }

    fn store<'a>(&'a self, id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<String>> {
        Box::pin(async move {
            let names = archives(staging)?;
            if names.is_empty() {
                return Err(TroveError::Internal(format!(
                    "{}: no archive was written",
                    staging.display()
                )));
            }
            for n in &names {
                let p = staging.join(n);
                let body = std::fs::read(&p).map_err(|e| io(&p, e))?;
                let (mut code, mut resp) = self
                    .request(reqwest::Method::PUT, &self.key(id, n), body.clone())
                    .await?;
                if code == 404 && String::from_utf8_lossy(&resp).contains("NoSuchBucket") {
                    // A new deployment: make the bucket (in the signing region), once.
                    let (c, r) = self
                        .request(reqwest::Method::PUT, "", self.bucket_body())
                        .await?;
                    if c != 200 && c != 409 {
                        return Err(s3err(format!(
                            "creating bucket {}: HTTP {c}: {}",
                            self.cfg.bucket,
                            String::from_utf8_lossy(&r)
                        )));
                    }
                    tracing::info!(bucket = self.cfg.bucket, "backup bucket created");
                    (code, resp) = self
                        .request(reqwest::Method::PUT, &self.key(id, n), body)
                        .await?;
                }
                if code != 200 {
                    return Err(s3err(format!(
                        "uploading {n}: HTTP {code}: {}",
                        String::from_utf8_lossy(&resp)
                    )));
                }
            }
            // The manifest last: a backup without one was never complete.
            let m = serde_json::to_vec(&serde_json::json!({"format": 1, "archives": names}))
                .expect("JSON");
            let (code, resp) = self
                .request(reqwest::Method::PUT, &self.key(id, "manifest.json"), m)
                .await?;
            if code != 200 {
                return Err(s3err(format!(
                    "writing the manifest: HTTP {code}: {}",
                    String::from_utf8_lossy(&resp)
                )));
            }
            std::fs::remove_dir_all(staging).map_err(|e| io(staging, e))?;
            Ok(format!("s3://{}/{}", self.cfg.bucket, self.key(id, "")))
        })
    }

    fn fetch<'a>(&'a self, id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<()>> {
        Box::pin(async move {
            let names = self.manifest(id).await?.ok_or_else(|| {
                TroveError::NotFound(format!("backup {id} is not in the object store"))
            })?;
            std::fs::create_dir_all(staging).map_err(|e| io(staging, e))?;
            for n in &names {
                let (code, body) = self
                    .request(reqwest::Method::GET, &self.key(id, n), vec![])
                    .await?;
                if code != 200 {
                    return Err(s3err(format!("downloading {n}: HTTP {code}")));
                }
                let p = staging.join(n);
                std::fs::write(&p, body).map_err(|e| io(&p, e))?;
            }
            Ok(())
        })
    }

    fn delete<'a>(&'a self, id: &'a str, staging: &'a Path) -> BoxFuture<'a, TroveResult<()>> {
        Box::pin(async move {
            if let Some(names) = self.manifest(id).await? {
                for n in names.iter().map(String::as_str).chain(["manifest.json"]) {
                    let (code, _) = self
                        .request(reqwest::Method::DELETE, &self.key(id, n), vec![])
                        .await?;
                    if code != 204 && code != 200 && code != 404 {
                        return Err(s3err(format!("deleting {n}: HTTP {code}")));
                    }
                }
            }
            if staging.exists() {
                std::fs::remove_dir_all(staging).map_err(|e| io(staging, e))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigv4_matches_the_aws_example() {
        // "Example: GET Object" of the S3 Signature Version 4 documentation.
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let auth = sigv4(
            "GET",
            "/test.txt",
            &[
                ("Host", "examplebucket.s3.amazonaws.com"),
                ("Range", "bytes=0-9"),
                ("x-amz-content-sha256", empty),
                ("x-amz-date", "20130524T000000Z"),
            ],
            empty,
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn config_is_checked() {
        assert!(BackupStoreConfig::default().validate().is_ok());
        let s3 = BackupStoreConfig {
            kind: "s3".into(),
            ..Default::default()
        };
        assert!(s3.validate().unwrap_err().contains("endpoint"));
        let bad = BackupStoreConfig {
            kind: "ftp".into(),
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    fn moto_server() -> Option<std::path::PathBuf> {
        let venv = std::env::var_os("K2HDKC_VENV")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::Path::new(&h).join(".cache/k2hdkc/venv"))
            })?;
        let p = venv.join("bin/moto_server");
        p.exists().then_some(p)
    }

    /// Against a real S3 implementation (moto's server, PyPI): store, fetch, delete.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn s3_round_trip_against_moto() {
        let Some(moto) = moto_server() else {
            eprintln!(
                "SKIP s3_round_trip_against_moto: no moto_server in the venv (scripts/setup.sh installs it)"
            );
            return;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto_server");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _k = Kill(child);
        let endpoint = format!("http://127.0.0.1:{port}");
        let endpoint = endpoint.as_str();
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "moto_server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "test-secret-key\n").unwrap();
        let cfg = BackupStoreConfig {
            kind: "s3".into(),
            endpoint: endpoint.into(),
            bucket: "k2hdkc-test".into(),
            access_key: "testing".into(),
            secret_key_file: secret.display().to_string(),
            ..Default::default()
        };
        let s3 = S3::new(cfg).unwrap();
        // No bucket yet: the first store makes it.
        let staging = dir.path().join("b1");
        std::fs::create_dir_all(&staging).unwrap();
        let a: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(staging.join("m1.archive"), &a).unwrap();
        std::fs::write(staging.join("m2.archive"), b"second member").unwrap();
        let loc = s3.store("b1", &staging).await.expect("store");
        assert_eq!(loc, "s3://k2hdkc-test/k2hdkc-backups/b1/");
        assert!(!staging.exists(), "the staging copy is removed once stored");
        s3.fetch("b1", &staging).await.expect("fetch");
        assert_eq!(std::fs::read(staging.join("m1.archive")).unwrap(), a);
        assert_eq!(
            std::fs::read(staging.join("m2.archive")).unwrap(),
            b"second member"
        );
        s3.delete("b1", &staging).await.expect("delete");
        assert!(s3.manifest("b1").await.unwrap().is_none());
        let e = s3.fetch("b1", &staging).await.unwrap_err();
        assert!(matches!(e, TroveError::NotFound(_)), "{e}");
        s3.delete("b1", &staging)
            .await
            .expect("delete is idempotent");
    }
}
