//! The PD's event log, followed from the start of a scenario: which operators
//! finished and how (`operator 17 on shard 3 (move-replica 1->4) done`). The
//! PD keeps its last 256 events; polled every second, none is missed unless more
//! than that happen within a second (counted in [`Events::missed`]).
//!
//! `cairnctl status` prints events only in table output, so this reads them
//! through the client library's `PdClient` (the same `GetCluster` call).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_client::{ClientConfig, PdClient};
use cairn_proto::PdEvent;

/// Events asked for per poll (the PD keeps 256).
const EVENTS_PER_POLL: u32 = 256;

/// An operator the event log says finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedOp {
    pub id: u64,
    pub shard: u64,
    /// As the PD prints it: `move-replica 1->4`.
    pub kind: String,
    /// `done`, `rolled back: why` or `abandoned: why`.
    pub outcome: String,
}

impl FinishedOp {
    /// Parses `operator ID on shard S (KIND) OUTCOME`.
    pub fn parse(message: &str) -> Option<FinishedOp> {
        let rest = message.strip_prefix("operator ")?;
        let (id, rest) = rest.split_once(" on shard ")?;
        let (shard, rest) = rest.split_once(" (")?;
        let (kind, outcome) = rest.split_once(") ")?;
        let outcome = outcome.trim();
        let finished = outcome == "done" || outcome.starts_with("rolled back") || outcome.starts_with("abandoned");
        if !finished {
            return None;
        }
        Some(FinishedOp {
            id: id.parse().ok()?,
            shard: shard.parse().ok()?,
            kind: kind.to_string(),
            outcome: outcome.to_string(),
        })
    }

    /// `move-replica`, without the nodes.
    pub fn kind_name(&self) -> &str {
        self.kind.split(' ').next().unwrap_or(&self.kind)
    }

    /// `done`, `rolled back` or `abandoned`.
    pub fn outcome_name(&self) -> &str {
        self.outcome.split(':').next().unwrap_or(&self.outcome)
    }
}

pub struct Events {
    pd: PdClient,
    /// Events after this sequence number belong to the scenario.
    since: u64,
    events: BTreeMap<u64, PdEvent>,
    /// Events that scrolled out of the PD's log between two polls.
    pub missed: u64,
}

impl Events {
    /// Starts following after the PD's latest event.
    pub async fn start(pd: &str) -> anyhow::Result<Events> {
        let config = ClientConfig {
            request_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let pd = PdClient::from_list(pd, config)?;
        let status = pd.cluster(EVENTS_PER_POLL).await?;
        let since = status.events.iter().map(|e| e.seq).max().unwrap_or(0);
        Ok(Events { pd, since, events: BTreeMap::new(), missed: 0 })
    }

    /// Fetches the events since the last poll and returns the new ones.
    pub async fn poll(&mut self) -> anyhow::Result<Vec<PdEvent>> {
        let status = self.pd.cluster(EVENTS_PER_POLL).await?;
        let last = self.events.keys().next_back().copied().unwrap_or(self.since);
        let mut new: Vec<PdEvent> = status.events.into_iter().filter(|e| e.seq > last).collect();
        new.sort_by_key(|e| e.seq);
        if let Some(first) = new.first() {
            self.missed += first.seq.saturating_sub(last + 1);
        }
        for e in &new {
            self.events.insert(e.seq, e.clone());
        }
        Ok(new)
    }

    pub fn finished(&self) -> Vec<FinishedOp> {
        self.events.values().filter_map(|e| FinishedOp::parse(&e.message)).collect()
    }

    /// Finished operators counted by kind and outcome: `move-replica done 29, ...`.
    pub fn tally(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for op in self.finished() {
            *out.entry((op.kind_name().to_string(), op.outcome_name().to_string())).or_insert(0) += 1;
        }
        out
    }

    /// Every event of the scenario, oldest first.
    pub fn all(&self) -> impl Iterator<Item = &PdEvent> {
        self.events.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_finished_operators_only() {
        let op = FinishedOp::parse("operator 17 on shard 3 (move-replica 1->4) done").expect("done");
        assert_eq!((op.id, op.shard, op.kind_name(), op.outcome_name()), (17, 3, "move-replica", "done"));
        let op = FinishedOp::parse("operator 2 on shard 9 (add-replica 5) rolled back: target node 5 is down")
            .expect("rolled back");
        assert_eq!(op.outcome_name(), "rolled back");
        assert!(FinishedOp::parse("operator 2 on shard 9: rolling back: target node 5 is down").is_none());
        assert!(FinishedOp::parse("scheduled move-replica 1->4 shard 3 (balance-replicas)").is_none());
    }
}
