//! Latency summaries from raw samples. The bench keeps every sample (one `u64` of
//! nanoseconds per operation, a few MB for a long run) and sorts them once at the end,
//! so percentiles are exact rather than bucketed.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The p50, p99 and max columns of a report table, in ms; `-` without samples.
pub fn columns(latency: Option<&LatencySummary>) -> [String; 3] {
    match latency {
        Some(l) => [l.p50_ms, l.p99_ms, l.max_ms].map(|ms| format!("{ms:.2}")),
        None => ["-", "-", "-"].map(String::from),
    }
}

/// Summarises `nanos`, or `None` if there are no samples.
pub fn summarize(mut nanos: Vec<u64>) -> Option<LatencySummary> {
    if nanos.is_empty() {
        return None;
    }
    nanos.sort_unstable();
    let ms = |n: u64| n as f64 / 1e6;
    let sum: u128 = nanos.iter().map(|n| u128::from(*n)).sum();
    Some(LatencySummary {
        p50_ms: ms(percentile(&nanos, 0.50)),
        p99_ms: ms(percentile(&nanos, 0.99)),
        max_ms: ms(*nanos.last().expect("not empty")),
        mean_ms: sum as f64 / nanos.len() as f64 / 1e6,
    })
}

/// Nearest-rank percentile of sorted, non-empty samples: the smallest sample that at
/// least `q` of all samples do not exceed.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
    }

    #[test]
    fn summary_in_ms() {
        let s = summarize(vec![3_000_000, 1_000_000, 2_000_000]).expect("samples");
        assert_eq!(s.p50_ms, 2.0);
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.mean_ms, 2.0);
        assert!(summarize(Vec::new()).is_none());
    }
}
