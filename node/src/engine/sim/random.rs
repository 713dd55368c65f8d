//! Thousands of seeded fault schedules, each checked against the protocol's invariants.
