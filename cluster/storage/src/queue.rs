//! Queues (K2HASH's FIFO/LIFO queues and key-queues).
//!
//! A queue is a named, ordered list of items in its own namespace (queue names never clash with
//! keys). Items are ordered by a 64-bit position: a FIFO push appends after the last item, a
//! LIFO push inserts before the first; pops and peeks always take the front. Each item can
//! carry a key (a key-queue), an expiry and its own encryption. Expired items are skipped by
//! pops and peeks, removed in the same change, and swept in the background. Every operation
//! locks one shard (the queue's), so pushes and pops are atomic and never lose or duplicate an
//! item.

use crate::change::{ChangeKind, Op, QueueItem};
use crate::error::{Error, Result};
use crate::state::QUEUE_ORIGIN;
use crate::store::{Expire, Store};

/// Options of a queue push.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueOpts<'a> {
    /// Item expiry (`Default` uses the store's default TTL).
    pub expire: Expire,
    /// Per-request pass phrase to encrypt with.
    pub pass: Option<&'a [u8]>,
    /// Force encryption on or off; `None` follows the store's default.
    pub encrypt: Option<bool>,
}

/// An item taken from or seen in a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Popped {
    /// The key of a key-queue item.
    pub key: Option<Vec<u8>>,
    /// The value (decrypted).
    pub value: Vec<u8>,
}

fn aad(queue: &[u8], key: Option<&[u8]>) -> Vec<u8> {
    let mut a = Vec::with_capacity(queue.len() + 3 + key.map_or(0, |k| k.len()));
    a.extend_from_slice(b"q:");
    a.extend_from_slice(queue);
    a.push(0);
    a.extend_from_slice(key.unwrap_or_default());
    a
}

impl Store {
    /// Push an item; `fifo` appends at the back, otherwise it goes to the front (LIFO).
    /// Returns the queue length afterwards.
    pub fn queue_push(
        &self,
        queue: &[u8],
        key: Option<&[u8]>,
        value: &[u8],
        fifo: bool,
        opts: &QueueOpts<'_>,
    ) -> Result<usize> {
        self.check_key(queue)?;
        if let Some(k) = key {
            self.check_key(k)?;
        }
        self.check_value(value.len())?;
        let (stored, encrypted) = self.seal_value(
            &aad(queue, key),
            value.to_vec(),
            opts.pass,
            opts.encrypt,
            None,
        )?;
        let l = self.lock(&[queue]);
        let now = self.now();
        let (id, len) = match l.queue(queue)? {
            Some(q) => {
                let id = if fifo {
                    q.items
                        .last_key_value()
                        .map_or(Some(QUEUE_ORIGIN), |(id, _)| id.checked_add(1))
                } else {
                    q.items
                        .first_key_value()
                        .map_or(Some(QUEUE_ORIGIN), |(id, _)| id.checked_sub(1))
                };
                // 2^63 pushes at one end from the origin; only imported ids can get here.
                let id = id.ok_or_else(|| {
                    Error::InvalidArgument("queue position space exhausted".into())
                })?;
                (id, q.items.len() + 1)
            }
            None => (QUEUE_ORIGIN, 1),
        };
        let version = self.new_version();
        let item = QueueItem {
            key: key.map(Box::from),
            value: stored.into(),
            expire: self.expire_at(opts.expire, None, now),
            encrypted,
            version,
        };
        self.commit_and_wait(
            l,
            version,
            ChangeKind::QueuePush,
            vec![Op::QueuePut {
                queue: queue.into(),
                id,
                item,
            }],
        )?;
        Ok(len)
    }

    fn open_item(&self, queue: &[u8], it: &QueueItem, pass: Option<&[u8]>) -> Result<Popped> {
        let value = self
            .open_value(
                &aad(queue, it.key.as_deref()),
                &it.value,
                it.encrypted,
                pass,
            )?
            .into_owned();
        Ok(Popped {
            key: it.key.as_ref().map(|k| k.to_vec()),
            value,
        })
    }

    /// Take the front item. An encrypted item that `pass` (or the keyring) cannot open stays
    /// in the queue and the call fails with `BadPassPhrase`.
    pub fn queue_pop(&self, queue: &[u8], pass: Option<&[u8]>) -> Result<Option<Popped>> {
        self.check_key(queue)?;
        let l = self.lock(&[queue]);
        let now = self.now();
        let Some(q) = l.queue(queue)? else {
            return Ok(None);
        };
        let mut ids = Vec::new();
        let mut popped = None;
        for (id, it) in q.items.iter() {
            ids.push(*id);
            if Store::queue_item_live(it, now) {
                popped = Some(self.open_item(queue, it, pass)?);
                break;
            }
        }
        let version = self.new_version();
        let kind = if popped.is_some() {
            ChangeKind::QueuePop
        } else {
            ChangeKind::Purge
        };
        self.commit_and_wait(
            l,
            version,
            kind,
            vec![Op::QueueDel {
                queue: queue.into(),
                ids,
            }],
        )?;
        Ok(popped)
    }

    /// The front item without taking it.
    pub fn queue_peek(&self, queue: &[u8], pass: Option<&[u8]>) -> Result<Option<Popped>> {
        self.check_key(queue)?;
        let l = self.lock(&[queue]);
        let now = self.now();
        let Some(q) = l.queue(queue)? else {
            return Ok(None);
        };
        match q.items.values().find(|it| Store::queue_item_live(it, now)) {
            Some(it) => Ok(Some(self.open_item(queue, it, pass)?)),
            None => Ok(None),
        }
    }

    /// Remove up to `count` live items from the front. Returns how many were removed.
    pub fn queue_remove(&self, queue: &[u8], count: usize) -> Result<usize> {
        self.check_key(queue)?;
        let l = self.lock(&[queue]);
        let now = self.now();
        let Some(q) = l.queue(queue)? else {
            return Ok(0);
        };
        let mut ids = Vec::new();
        let mut removed = 0;
        for (id, it) in q.items.iter() {
            if removed == count {
                break;
            }
            ids.push(*id);
            if Store::queue_item_live(it, now) {
                removed += 1;
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let version = self.new_version();
        self.commit_and_wait(
            l,
            version,
            ChangeKind::QueuePop,
            vec![Op::QueueDel {
                queue: queue.into(),
                ids,
            }],
        )?;
        Ok(removed)
    }

    /// Number of live items.
    pub fn queue_len(&self, queue: &[u8]) -> Result<usize> {
        self.check_key(queue)?;
        let l = self.lock(&[queue]);
        let now = self.now();
        Ok(l.queue(queue)?.map_or(0, |q| {
            q.items
                .values()
                .filter(|it| Store::queue_item_live(it, now))
                .count()
        }))
    }
}
