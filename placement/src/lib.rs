//! `cairn-placement`: the placement driver (PD). Empty until the placement
//! issue: it will own the shard map (nodes, shards, epochs, replicas), allocate
//! ids and schedule replica moves, as its own Raft group. Invariant to keep:
//! only this crate writes the shard map; nodes report what they observe.
