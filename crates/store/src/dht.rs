//! DHT records this node holds for the network (Kademlia's record store),
//! kept so a restart serves what the node held before.

use rusqlite::params;

use crate::error::{sql, StoreError};
use crate::{page, Store};

/// One DHT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtRecordRow {
    /// The record key.
    pub key: Vec<u8>,
    /// The record value (for peercomm: a signed peer record).
    pub value: Vec<u8>,
    /// The peer that published it, as PeerId bytes, if known.
    pub publisher: Option<Vec<u8>>,
    /// When it expires, ms since the epoch; `None` = never.
    pub expires_ms: Option<u64>,
}

impl Store {
    /// Stores or replaces a DHT record.
    pub fn put_dht_record(&mut self, row: &DhtRecordRow, now_ms: u64) -> Result<(), StoreError> {
        const OP: &str = "put_dht_record";
        let tx = self.write_tx(OP)?;
        tx.prepare_cached(
            "INSERT INTO dht_records (key, value, publisher, expires_ms, stored_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
             publisher = excluded.publisher, expires_ms = excluded.expires_ms, \
             stored_ms = excluded.stored_ms",
        )
        .and_then(|mut s| {
            s.execute(params![
                row.key,
                row.value,
                row.publisher,
                row.expires_ms,
                now_ms
            ])
        })
        .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))
    }

    /// Removes a DHT record (no error if absent).
    pub fn remove_dht_record(&mut self, key: &[u8]) -> Result<(), StoreError> {
        const OP: &str = "remove_dht_record";
        let tx = self.write_tx(OP)?;
        tx.prepare_cached("DELETE FROM dht_records WHERE key = ?1")
            .and_then(|mut s| s.execute(params![key]))
            .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))
    }

    /// Deletes expired records; returns how many.
    pub fn purge_expired_dht_records(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        const OP: &str = "purge_expired_dht_records";
        let tx = self.write_tx(OP)?;
        let n = tx
            .prepare_cached(
                "DELETE FROM dht_records WHERE expires_ms IS NOT NULL AND expires_ms <= ?1",
            )
            .and_then(|mut s| s.execute(params![now_ms]))
            .map_err(sql(OP))?;
        tx.commit().map_err(sql(OP))?;
        Ok(n)
    }

    /// A page of unexpired records, by key, after `after_key`.
    pub fn dht_records(
        &self,
        now_ms: u64,
        after_key: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<DhtRecordRow>, StoreError> {
        const OP: &str = "dht_records";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT key, value, publisher, expires_ms FROM dht_records \
                 WHERE (expires_ms IS NULL OR expires_ms > ?1) AND key > ?2 \
                 ORDER BY key LIMIT ?3",
            )
            .map_err(sql(OP))?;
        let after: &[u8] = after_key.unwrap_or(&[]);
        let rows = stmt
            .query_map(params![now_ms, after, page(limit)], |r| {
                Ok(DhtRecordRow {
                    key: r.get(0)?,
                    value: r.get(1)?,
                    publisher: r.get(2)?,
                    expires_ms: r.get(3)?,
                })
            })
            .map_err(sql(OP))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql(OP))
    }
}

impl Store {
    /// Replaces the saved routing-table peers with `peers` (peer id, addresses).
    pub fn save_dht_peers(
        &mut self,
        peers: &[(String, Vec<String>)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        const OP: &str = "save_dht_peers";
        let tx = self.write_tx(OP)?;
        tx.execute("DELETE FROM dht_peers", []).map_err(sql(OP))?;
        {
            let mut insert = tx
                .prepare_cached("INSERT OR REPLACE INTO dht_peers (peer_id, addrs, updated_ms) VALUES (?1, ?2, ?3)")
                .map_err(sql(OP))?;
            for (peer, addrs) in peers {
                insert
                    .execute(params![peer, addrs.join("\n"), now_ms])
                    .map_err(sql(OP))?;
            }
        }
        tx.commit().map_err(sql(OP))
    }

    /// The saved routing-table peers, most recently saved first.
    pub fn dht_peers(&self, limit: u32) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        const OP: &str = "dht_peers";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT peer_id, addrs FROM dht_peers ORDER BY updated_ms DESC LIMIT ?1",
            )
            .map_err(sql(OP))?;
        let rows = stmt
            .query_map(params![page(limit)], |r| {
                let addrs: String = r.get(1)?;
                Ok((
                    r.get::<_, String>(0)?,
                    addrs
                        .lines()
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect(),
                ))
            })
            .map_err(sql(OP))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql(OP))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: u8, expires_ms: Option<u64>) -> DhtRecordRow {
        DhtRecordRow {
            key: vec![key],
            value: vec![key, key],
            publisher: None,
            expires_ms,
        }
    }

    #[test]
    fn records_are_kept_replaced_paged_and_purged() {
        let mut store = Store::open_in_memory().unwrap();
        for k in 1..=5u8 {
            store
                .put_dht_record(&row(k, Some(1_000 * k as u64)), 0)
                .unwrap();
        }
        let mut replaced = row(5, None);
        replaced.value = vec![9];
        store.put_dht_record(&replaced, 0).unwrap();
        let page1 = store.dht_records(1_500, None, 2).unwrap();
        assert_eq!(
            page1.iter().map(|r| r.key[0]).collect::<Vec<_>>(),
            vec![2, 3]
        );
        let page2 = store.dht_records(1_500, Some(&page1[1].key), 10).unwrap();
        assert_eq!(
            page2.iter().map(|r| r.key[0]).collect::<Vec<_>>(),
            vec![4, 5]
        );
        assert_eq!(page2[1].value, vec![9]);
        assert_eq!(store.purge_expired_dht_records(3_000).unwrap(), 3);
        store.remove_dht_record(&[4]).unwrap();
        let left = store.dht_records(0, None, 10).unwrap();
        assert_eq!(left.iter().map(|r| r.key[0]).collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn routing_peers_are_replaced_as_a_whole() {
        let mut store = Store::open_in_memory().unwrap();
        let a = ("a".to_string(), vec!["/ip4/127.0.0.1/tcp/1".to_string()]);
        let b = (
            "b".to_string(),
            vec!["/ip4/127.0.0.1/tcp/2".into(), "/ip4/127.0.0.1/tcp/3".into()],
        );
        store.save_dht_peers(&[a.clone(), b.clone()], 1).unwrap();
        let mut got = store.dht_peers(10).unwrap();
        got.sort();
        assert_eq!(got, vec![a, b.clone()]);
        store.save_dht_peers(std::slice::from_ref(&b), 2).unwrap();
        assert_eq!(store.dht_peers(10).unwrap(), vec![b]);
    }
}
