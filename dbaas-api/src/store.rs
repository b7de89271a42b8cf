//! The control plane's state, the only place its SQL lives: documents (instances, clusters,
//! backups, configurations) as versioned JSON rows with their indexed fields, persisted tasks,
//! loopback address leases and quotas. SQLite or PostgreSQL through sqlx's `Any` driver, with
//! one schema (tables prefixed `tr_`; the K2HR3 service's are `r3_`).
//!
//! Invariants: every write of a document goes through [`Db::update`] under one process-wide
//! lock, so read-modify-write never loses an update; a document row carries the format
//! version of its JSON (`fmt`), refused when newer than this build; an address is leased to
//! at most one instance (primary key).

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tokio::sync::Mutex;

use crate::error::{TroveError, TroveResult};

/// The schema this build writes.
pub const SCHEMA_VERSION: i64 = 1;
/// The document format this build writes.
pub const DOC_FORMAT: i64 = 1;

const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS tr_docs (kind TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, name TEXT NOT NULL, deleted BIGINT NOT NULL, created BIGINT NOT NULL, fmt BIGINT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id))",
    "CREATE INDEX IF NOT EXISTS tr_docs_project ON tr_docs (kind, project, deleted, created)",
    "CREATE TABLE IF NOT EXISTS tr_tasks (id TEXT PRIMARY KEY, kind TEXT NOT NULL, target TEXT NOT NULL, status TEXT NOT NULL, created BIGINT NOT NULL, updated BIGINT NOT NULL, error TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tr_leases (ip TEXT PRIMARY KEY, instance TEXT NOT NULL, created BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tr_quotas (project TEXT NOT NULL, resource TEXT NOT NULL, hard BIGINT NOT NULL, PRIMARY KEY (project, resource))",
];

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What a stored document exposes to the store.
pub trait Doc: Serialize + DeserializeOwned + Clone + Send + Sync {
    /// The table kind (`instance`, `cluster`, ...).
    const KIND: &'static str;
    /// Its id.
    fn id(&self) -> &str;
    /// Its project.
    fn project(&self) -> &str;
    /// Its name.
    fn name(&self) -> &str;
    /// Whether it is deleted (kept for history, never listed).
    fn deleted(&self) -> bool;
    /// Creation time.
    fn created(&self) -> i64;
}

/// One persisted task.
#[derive(Debug, Clone)]
pub struct TaskRow {
    /// Id.
    pub id: String,
    /// What it does.
    pub kind: String,
    /// The object it works on.
    pub target: String,
    /// `pending`, `running`, `done`, `failed`.
    pub status: String,
    /// The failure, when failed.
    pub error: String,
    /// Its own state (progress).
    pub doc: serde_json::Value,
    /// When it was made.
    pub created: i64,
}

/// The database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    write: Arc<Mutex<()>>,
}

fn doc_of<T: Doc>(r: &AnyRow) -> TroveResult<T> {
    let fmt: i64 = r.try_get("fmt")?;
    if fmt > DOC_FORMAT {
        return Err(TroveError::Internal(format!(
            "a stored {} has format {fmt}; this build knows up to {DOC_FORMAT}",
            T::KIND
        )));
    }
    let s: String = r.try_get("doc")?;
    serde_json::from_str(&s).map_err(|e| TroveError::Internal(format!("stored {}: {e}", T::KIND)))
}

impl Db {
    /// Connect to `url` and migrate.
    pub async fn open(url: &str) -> TroveResult<Db> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let mut o = AnyPoolOptions::new().max_connections(if sqlite { 1 } else { 8 });
        if sqlite {
            o = o.idle_timeout(None).max_lifetime(None);
        }
        let pool = o.connect(url).await?;
        if sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .ok();
            sqlx::query("PRAGMA busy_timeout = 5000")
                .execute(&pool)
                .await
                .ok();
        }
        let db = Db {
            pool,
            write: Arc::new(Mutex::new(())),
        };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> TroveResult<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS tr_schema (version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        let v: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM tr_schema")
            .fetch_one(&self.pool)
            .await?
            .try_get("v")
            .ok();
        let v = v.unwrap_or(0);
        if v > SCHEMA_VERSION {
            return Err(TroveError::Internal(format!(
                "the database has control-plane schema {v}; this build knows up to {SCHEMA_VERSION}"
            )));
        }
        if v < 1 {
            for s in SCHEMA_V1 {
                sqlx::query(*s).execute(&self.pool).await?;
            }
            sqlx::query("INSERT INTO tr_schema (version) VALUES ($1)")
                .bind(1i64)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Insert a new document (its id must be new).
    pub async fn insert<T: Doc>(&self, d: &T) -> TroveResult<()> {
        let _g = self.write.lock().await;
        self.put_locked(d, true).await
    }

    async fn put_locked<T: Doc>(&self, d: &T, new: bool) -> TroveResult<()> {
        let doc = serde_json::to_string(d).expect("documents serialise");
        let q = if new {
            "INSERT INTO tr_docs (kind, id, project, name, deleted, created, fmt, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        } else {
            "UPDATE tr_docs SET project = $3, name = $4, deleted = $5, created = $6, fmt = $7, doc = $8 WHERE kind = $1 AND id = $2"
        };
        sqlx::query(q)
            .bind(T::KIND)
            .bind(d.id().to_string())
            .bind(d.project().to_string())
            .bind(d.name().to_string())
            .bind(i64::from(d.deleted()))
            .bind(d.created())
            .bind(DOC_FORMAT)
            .bind(doc)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Read-modify-write one document; `f` may refuse with an error (nothing is written).
    pub async fn update<T: Doc, R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut T) -> TroveResult<R>,
    ) -> TroveResult<(T, R)> {
        let _g = self.write.lock().await;
        let mut d: T = self
            .get_any(id)
            .await?
            .ok_or_else(|| TroveError::NotFound(format!("{} {id} could not be found", T::KIND)))?;
        let r = f(&mut d)?;
        self.put_locked(&d, false).await?;
        Ok((d, r))
    }

    /// A document by id, deleted or not.
    pub async fn get_any<T: Doc>(&self, id: &str) -> TroveResult<Option<T>> {
        let r = sqlx::query("SELECT fmt, doc FROM tr_docs WHERE kind = $1 AND id = $2")
            .bind(T::KIND)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(doc_of).transpose()
    }

    /// A live document of `project` by id.
    pub async fn get<T: Doc>(&self, project: Option<&str>, id: &str) -> TroveResult<Option<T>> {
        Ok(self
            .get_any::<T>(id)
            .await?
            .filter(|d| !d.deleted() && project.is_none_or(|p| d.project() == p)))
    }

    /// Live documents of `project` (every project with `None`), oldest first.
    pub async fn list<T: Doc>(&self, project: Option<&str>) -> TroveResult<Vec<T>> {
        let rows = match project {
            Some(p) => {
                sqlx::query("SELECT fmt, doc FROM tr_docs WHERE kind = $1 AND project = $2 AND deleted = 0 ORDER BY created, id")
                    .bind(T::KIND)
                    .bind(p.to_string())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT fmt, doc FROM tr_docs WHERE kind = $1 AND deleted = 0 ORDER BY created, id")
                    .bind(T::KIND)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(doc_of).collect()
    }

    // ---- tasks

    /// Record a new pending task.
    pub async fn add_task(
        &self,
        id: &str,
        kind: &str,
        target: &str,
        doc: &serde_json::Value,
    ) -> TroveResult<()> {
        let t = now();
        sqlx::query("INSERT INTO tr_tasks (id, kind, target, status, created, updated, error, doc) VALUES ($1, $2, $3, 'pending', $4, $4, '', $5)")
            .bind(id.to_string())
            .bind(kind.to_string())
            .bind(target.to_string())
            .bind(t)
            .bind(doc.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Set a task's status, error and state.
    pub async fn set_task(
        &self,
        id: &str,
        status: &str,
        error: &str,
        doc: &serde_json::Value,
    ) -> TroveResult<()> {
        sqlx::query(
            "UPDATE tr_tasks SET status = $2, error = $3, doc = $4, updated = $5 WHERE id = $1",
        )
        .bind(id.to_string())
        .bind(status.to_string())
        .bind(error.to_string())
        .bind(doc.to_string())
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Tasks not finished (to resume after a restart), oldest first.
    pub async fn open_tasks(&self) -> TroveResult<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT * FROM tr_tasks WHERE status IN ('pending', 'running') ORDER BY created, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_of).collect()
    }

    /// Unfinished tasks of one kind.
    pub async fn tasks_of_kind_running(&self, kind: &str) -> TroveResult<Vec<TaskRow>> {
        let rows = sqlx::query(
            "SELECT * FROM tr_tasks WHERE kind = $1 AND status IN ('pending', 'running')",
        )
        .bind(kind.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_of).collect()
    }

    /// Every task of `target`, newest first.
    pub async fn tasks_of(&self, target: &str) -> TroveResult<Vec<TaskRow>> {
        let rows =
            sqlx::query("SELECT * FROM tr_tasks WHERE target = $1 ORDER BY created DESC, id DESC")
                .bind(target.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(task_of).collect()
    }

    // ---- address leases

    /// Lease the first free address of `candidates` to `instance` (the one it already holds,
    /// if any); `None` when all are taken.
    pub async fn lease(
        &self,
        instance: &str,
        candidates: impl Iterator<Item = String>,
        usable: impl Fn(&str) -> bool,
    ) -> TroveResult<Option<String>> {
        let _g = self.write.lock().await;
        if let Some(r) = sqlx::query("SELECT ip FROM tr_leases WHERE instance = $1")
            .bind(instance.to_string())
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(Some(r.try_get("ip")?));
        }
        let taken: std::collections::HashSet<String> = sqlx::query("SELECT ip FROM tr_leases")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .filter_map(|r| r.try_get("ip").ok())
            .collect();
        for ip in candidates {
            if taken.contains(&ip) || !usable(&ip) {
                continue;
            }
            sqlx::query("INSERT INTO tr_leases (ip, instance, created) VALUES ($1, $2, $3)")
                .bind(ip.clone())
                .bind(instance.to_string())
                .bind(now())
                .execute(&self.pool)
                .await?;
            return Ok(Some(ip));
        }
        Ok(None)
    }

    /// Give back `instance`'s address.
    pub async fn release(&self, instance: &str) -> TroveResult<()> {
        let _g = self.write.lock().await;
        sqlx::query("DELETE FROM tr_leases WHERE instance = $1")
            .bind(instance.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The most recently leased address (so new leases continue after it, not reuse it).
    pub async fn last_lease(&self) -> TroveResult<Option<String>> {
        Ok(
            sqlx::query("SELECT ip FROM tr_leases ORDER BY created DESC, ip DESC LIMIT 1")
                .fetch_optional(&self.pool)
                .await?
                .and_then(|r| r.try_get("ip").ok()),
        )
    }

    // ---- quotas

    /// `project`'s limits that differ from the defaults.
    pub async fn quotas(&self, project: &str) -> TroveResult<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT resource, hard FROM tr_quotas WHERE project = $1")
            .bind(project.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("resource")?, r.try_get("hard")?)))
            .collect()
    }

    /// Set one limit.
    pub async fn set_quota(&self, project: &str, resource: &str, hard: i64) -> TroveResult<()> {
        let _g = self.write.lock().await;
        sqlx::query("DELETE FROM tr_quotas WHERE project = $1 AND resource = $2")
            .bind(project.to_string())
            .bind(resource.to_string())
            .execute(&self.pool)
            .await?;
        sqlx::query("INSERT INTO tr_quotas (project, resource, hard) VALUES ($1, $2, $3)")
            .bind(project.to_string())
            .bind(resource.to_string())
            .bind(hard)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn task_of(r: &AnyRow) -> TroveResult<TaskRow> {
    Ok(TaskRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        target: r.try_get("target")?,
        status: r.try_get("status")?,
        error: r.try_get("error")?,
        doc: serde_json::from_str(&r.try_get::<String, _>("doc")?).unwrap_or_default(),
        created: r.try_get("created")?,
    })
}
