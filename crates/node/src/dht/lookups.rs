//! Figures about DHT lookups, for `dht stats`, the API and the demo.

use std::collections::VecDeque;

use serde::Serialize;

/// Lookups remembered for the percentiles.
const KEPT: usize = 4096;

/// One finished lookup.
#[derive(Debug, Clone, Copy)]
struct Lookup {
    ok: bool,
    requests: u32,
    ms: u64,
}

/// The recent lookups of a node.
#[derive(Debug, Default)]
pub(crate) struct LookupLog {
    recent: VecDeque<Lookup>,
    total: u64,
    succeeded: u64,
}

/// Lookup figures: counts, and percentiles over the last 4,096.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LookupFigures {
    /// Lookups finished since start.
    pub lookups: u64,
    /// Of those, how many found a valid record.
    pub succeeded: u64,
    /// Requests sent per lookup (the work a lookup took), median.
    pub requests_p50: f64,
    /// Requests per lookup, 95th percentile.
    pub requests_p95: f64,
    /// Lookup latency in ms, median.
    pub latency_ms_p50: f64,
    /// Lookup latency in ms, 99th percentile.
    pub latency_ms_p99: f64,
}

/// What `dht stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DhtStats {
    /// Peers in the routing table.
    pub routing_table_peers: usize,
    /// Non-empty buckets as (bucket index = log2 distance, peers).
    pub buckets: Vec<(u32, usize)>,
    /// Records this node holds for the network.
    pub records_held: usize,
    /// Whether a bootstrap has completed.
    pub joined: bool,
    /// Lookup figures.
    pub lookups: LookupFigures,
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[rank.min(values.len() - 1)]
}

impl LookupLog {
    /// Notes a finished lookup.
    pub(crate) fn record(&mut self, ok: bool, requests: u32, ms: u64) {
        self.total += 1;
        if ok {
            self.succeeded += 1;
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(Lookup { ok, requests, ms });
    }

    /// The figures so far.
    pub(crate) fn figures(&self) -> LookupFigures {
        let mut requests: Vec<f64> = self.recent.iter().map(|l| l.requests as f64).collect();
        let mut latency: Vec<f64> = self
            .recent
            .iter()
            .filter(|l| l.ok)
            .map(|l| l.ms as f64)
            .collect();
        LookupFigures {
            lookups: self.total,
            succeeded: self.succeeded,
            requests_p50: percentile(&mut requests, 0.50),
            requests_p95: percentile(&mut requests, 0.95),
            latency_ms_p50: percentile(&mut latency, 0.50),
            latency_ms_p99: percentile(&mut latency, 0.99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_and_rank() {
        let mut log = LookupLog::default();
        for i in 1..=100u32 {
            log.record(i % 10 != 0, i, u64::from(i));
        }
        let f = log.figures();
        assert_eq!((f.lookups, f.succeeded), (100, 90));
        assert_eq!(f.requests_p50, 51.0);
        assert_eq!(f.requests_p95, 95.0);
        for _ in 0..KEPT {
            log.record(true, 1, 1);
        }
        assert_eq!(log.figures().requests_p95, 1.0);
        assert_eq!(log.figures().lookups, 100 + KEPT as u64);
    }
}
