//! Kademlia's record store, kept in SQLite.
//!
//! Reads are served from memory (libp2p's `MemoryStore`, whose limits bound
//! how much a node holds); every write is mirrored to the `dht_records` table
//! by a worker thread, so the swarm task never waits on an fsync, and a
//! restart loads what the node held.

use std::borrow::Cow;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore, Result as StoreResult};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;
use peercomm_store::{DhtRecordRow, Store};

use crate::clock::Clock;

/// Writes queued for the worker before new ones are dropped (the record is
/// still served from memory and re-published by its owner).
const PERSIST_QUEUE: usize = 4096;
/// Records a node holds for others at most.
pub(crate) const MAX_RECORDS: usize = 65_536;

enum Persist {
    Put(DhtRecordRow),
    Remove(Vec<u8>),
}

/// A `RecordStore` in memory, mirrored to SQLite.
pub(crate) struct PersistentStore {
    mem: MemoryStore,
    persist: SyncSender<Persist>,
    clock: Arc<dyn Clock>,
}

impl PersistentStore {
    /// Loads the unexpired records from `store` and starts the mirror worker.
    pub(crate) fn open(local: PeerId, store: Arc<Mutex<Store>>, clock: Arc<dyn Clock>) -> Self {
        let mut mem = MemoryStore::with_config(
            local,
            MemoryStoreConfig {
                max_records: MAX_RECORDS,
                max_value_bytes: peercomm_wire::limits::MAX_RECORD_BYTES,
                ..Default::default()
            },
        );
        let now_ms = clock.now_ms();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..(MAX_RECORDS / 500 + 1) {
            let page = {
                let guard = store.lock().unwrap_or_else(|p| p.into_inner());
                guard.dht_records(now_ms, after.as_deref(), 500)
            };
            let Ok(page) = page else { break };
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for row in page {
                let mut record = Record::new(RecordKey::new(&row.key), row.value);
                record.publisher = row.publisher.and_then(|p| PeerId::from_bytes(&p).ok());
                record.expires = row
                    .expires_ms
                    .map(|ms| Instant::now() + Duration::from_millis(ms.saturating_sub(now_ms)));
                let _ = mem.put(record);
            }
        }
        let (tx, rx) = sync_channel::<Persist>(PERSIST_QUEUE);
        let worker_clock = clock.clone();
        let _ = std::thread::Builder::new()
            .name("peercomm-dht-store".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
                    let result = match op {
                        Persist::Put(row) => guard.put_dht_record(&row, worker_clock.now_ms()),
                        Persist::Remove(key) => guard.remove_dht_record(&key),
                    };
                    if let Err(e) = result {
                        tracing::warn!("cannot persist a DHT record: {e}");
                    }
                }
            });
        Self {
            mem,
            persist: tx,
            clock,
        }
    }

    fn mirror(&self, op: Persist) {
        if let Err(TrySendError::Full(_)) = self.persist.try_send(op) {
            tracing::warn!("DHT record persistence is behind; a write was skipped");
        }
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.mem.get(k)
    }

    fn put(&mut self, r: Record) -> StoreResult<()> {
        let now_ms = self.clock.now_ms();
        let row = DhtRecordRow {
            key: r.key.to_vec(),
            value: r.value.clone(),
            publisher: r.publisher.map(|p| p.to_bytes()),
            expires_ms: r.expires.map(|at| {
                now_ms.saturating_add(
                    u64::try_from(at.saturating_duration_since(Instant::now()).as_millis())
                        .unwrap_or(u64::MAX),
                )
            }),
        };
        self.mem.put(r)?;
        self.mirror(Persist::Put(row));
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.mem.remove(k);
        self.mirror(Persist::Remove(k.to_vec()));
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.mem.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> StoreResult<()> {
        self.mem.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.mem.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.mem.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.mem.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn records_survive_a_reopen_and_removals_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Arc::new(Mutex::new(Store::open(&path).unwrap()));
        let me = PeerId::random();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        {
            let mut s = PersistentStore::open(me, store.clone(), clock.clone());
            let mut kept = Record::new(RecordKey::new(b"kept"), vec![1, 2, 3]);
            kept.expires = Some(Instant::now() + Duration::from_secs(3600));
            s.put(kept).unwrap();
            s.put(Record::new(RecordKey::new(b"gone"), vec![4]))
                .unwrap();
            s.remove(&RecordKey::new(b"gone"));
        }
        // The worker drains its queue once the sender is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let rows = store.lock().unwrap().dht_records(0, None, 10).unwrap();
            if rows.len() == 1 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reopened = PersistentStore::open(me, store, clock);
        let kept = reopened.get(&RecordKey::new(b"kept")).unwrap();
        assert_eq!(kept.value, vec![1, 2, 3]);
        assert!(kept.expires.is_some());
        assert!(reopened.get(&RecordKey::new(b"gone")).is_none());
    }
}
