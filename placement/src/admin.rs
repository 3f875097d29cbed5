//! Administrative decisions: cluster settings, hand-made operators, node
//! states. Each validates against the current state and returns the writes,
//! or a [`PdError`] that leaves the state unchanged.

use cairn_proto::{AdminRequest, ClusterSettings, NodeId, OperatorKind, ReplicaRole, ShardId};

use crate::decide::{PdError, validate_settings};
use crate::model::{AdminState, NodeRecord, OperatorRecord, PD_SHARD, PdState, Writes};
use crate::observed::Observed;
use crate::operator::new_operator;

/// Parses a duration: a number with an optional unit `ms`, `s`, `m`, `h`
/// (no unit: milliseconds).
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Parses a byte count: a number with an optional unit: `B`, decimal `KB`,
/// `MB`, `GB` (powers of 1000) or binary `KiB`/`K`, `MiB`/`M`, `GiB`/`G`
/// (powers of 1024), case-insensitive.
pub fn parse_bytes(value: &str) -> Option<u64> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `settings` with `name` set to `value`, validated as a whole.
pub fn apply_setting(settings: &ClusterSettings, name: &str, value: &str) -> Result<ClusterSettings, PdError> {
    let bad = |what: &str| PdError::InvalidSetting(format!("{name}: {value:?} is not {what}"));
    let number = |v: &str| v.trim().parse::<u64>().map_err(|_| bad("a whole number"));
    let mut s = settings.clone();
    match name {
        "replication-factor" => s.replication_factor = u32::try_from(number(value)?).map_err(|_| bad("1-7"))?,
        "max-node-down-time" => s.max_node_down_time_ms = parse_duration_ms(value).ok_or_else(|| bad("a duration"))?,
        "max-moves-per-node" => s.max_moves_per_node = u32::try_from(number(value)?).map_err(|_| bad("small"))?,
        "max-operators" => s.max_operators = u32::try_from(number(value)?).map_err(|_| bad("small"))?,
        "snapshot-bytes-per-sec" => {
            s.snapshot_bytes_per_sec = parse_bytes(value).ok_or_else(|| bad("a byte count like 64MiB"))?
        }
        "operator-timeout" => s.operator_timeout_ms = parse_duration_ms(value).ok_or_else(|| bad("a duration"))?,
        "balance-bytes-tolerance-percent" => {
            s.balance_bytes_tolerance_percent = u32::try_from(number(value)?).map_err(|_| bad("a percentage"))?
        }
        _ => {
            let names: Vec<&str> = cairn_proto::SETTING_NAMES.iter().map(|(n, _)| *n).collect();
            return Err(PdError::InvalidSetting(format!("unknown setting {name:?}; settings: {}", names.join(", "))));
        }
    }
    validate_settings(&s)?;
    Ok(s)
}

/// Changes one setting.
pub fn set_setting(state: &PdState, name: &str, value: &str, now_ms: u64) -> Result<Writes, PdError> {
    let c = state.cluster.as_ref().ok_or(PdError::NotBootstrapped)?;
    let settings = apply_setting(&c.settings, name, value)?;
    let mut writes = Writes::default();
    if settings == c.settings {
        return Ok(writes);
    }
    let mut c = c.clone();
    c.settings = settings;
    writes.cluster = Some(c);
    writes.event(state, now_ms, format!("setting {name} = {value}"));
    Ok(writes)
}

/// Validates and creates an operator asked for by an administrator.
pub fn create_operator(
    state: &PdState,
    observed: &Observed,
    shard: ShardId,
    kind: OperatorKind,
    now_ms: u64,
) -> Result<(OperatorRecord, Writes), PdError> {
    let settings = state.settings();
    let record = state.shard(shard).ok_or(PdError::UnknownShard(shard))?;
    if let Some(op) = state.operators.get(&shard) {
        return Err(PdError::Busy(format!("shard {shard} already has operator {} ({})", op.id, op.kind)));
    }
    if record.creating {
        return Err(PdError::Busy(format!("shard {shard} is still being created")));
    }
    let d = &record.descriptor;
    let role = |n: NodeId| d.replicas.iter().find(|r| r.node == n).map(|r| r.role);
    let usable = |n: NodeId| -> Result<(), PdError> {
        let node = state.nodes.get(&n).ok_or(PdError::UnknownNode(n))?;
        if node.admin != AdminState::Active {
            return Err(PdError::Refused(format!("node {n} is not active")));
        }
        if !observed.is_fresh(n, now_ms) {
            return Err(PdError::Refused(format!("node {n} is down")));
        }
        Ok(())
    };
    let voters = d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).count();
    match &kind {
        OperatorKind::MoveReplica { from, to } => {
            if role(*from) != Some(ReplicaRole::Voter) {
                return Err(PdError::Refused(format!("node {from} holds no voter of shard {shard}")));
            }
            if role(*to).is_some() {
                return Err(PdError::Refused(format!("node {to} already holds a replica of shard {shard}")));
            }
            usable(*to)?;
        }
        OperatorKind::AddReplica { to } => {
            if role(*to).is_some() {
                return Err(PdError::Refused(format!("node {to} already holds a replica of shard {shard}")));
            }
            usable(*to)?;
        }
        OperatorKind::RemoveReplica { from } => {
            if role(*from).is_none() {
                return Err(PdError::Refused(format!("node {from} holds no replica of shard {shard}")));
            }
            if role(*from) == Some(ReplicaRole::Voter) && voters <= settings.replication_factor as usize {
                return Err(PdError::Refused(format!(
                    "shard {shard} would have fewer voters than the replication factor ({})",
                    settings.replication_factor
                )));
            }
        }
        OperatorKind::TransferLeader { to } => {
            if role(*to) != Some(ReplicaRole::Voter) {
                return Err(PdError::Refused(format!("node {to} holds no voter of shard {shard}")));
            }
            usable(*to)?;
        }
    }
    let mut writes = Writes::default();
    let op =
        new_operator(state, &mut writes, shard, kind, "admin", &settings, now_ms).ok_or(PdError::NotBootstrapped)?;
    writes.event(state, now_ms, format!("operator {} on shard {shard}: {} (admin)", op.id, op.kind));
    Ok((op, writes))
}

/// Drains, re-activates or removes a node.
pub fn set_node_state(state: &PdState, node: NodeId, to: AdminRequest, now_ms: u64) -> Result<Writes, PdError> {
    state.cluster.as_ref().ok_or(PdError::NotBootstrapped)?;
    let record = state.nodes.get(&node).ok_or(PdError::UnknownNode(node))?;
    let admin = match to {
        AdminRequest::Active => AdminState::Active,
        AdminRequest::Draining => AdminState::Draining,
        AdminRequest::Removed => AdminState::Removed,
    };
    if record.admin == admin {
        return Ok(Writes::default());
    }
    if record.admin == AdminState::Removed {
        return Err(PdError::RemovedNode(node));
    }
    if admin == AdminState::Removed {
        let holds = state.replica_counts().get(&node).copied().unwrap_or(0);
        if holds > 0 {
            return Err(PdError::Refused(format!(
                "node {node} still holds {holds} replica(s); drain it first (cairnctl node drain {node})"
            )));
        }
        if state.shard(PD_SHARD).is_some_and(|s| s.descriptor.replicas.iter().any(|r| r.node == node))
            || (state.pd_shard.is_none() && state.pd_members().contains(&node))
        {
            return Err(PdError::Refused(format!(
                "node {node} still holds a replica of the placement driver (shard 0); \
                 drain it first (cairnctl node drain {node})"
            )));
        }
        if state.operators.values().any(|o| crate::operator::involved(&o.kind).contains(&node)) {
            return Err(PdError::Busy(format!("an operator still involves node {node}")));
        }
    }
    let mut writes = Writes::default();
    writes.nodes.push(NodeRecord { admin, ..record.clone() });
    writes.event(state, now_ms, format!("node {node} is now {}", to.as_str()));
    Ok(writes)
}
