//! Which instance of a service gets the next message.

use shoal_proto::NodeId;

/// One live instance as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) node: NodeId,
    /// Messages sent to it and not yet acknowledged.
    pub(crate) in_flight: usize,
}

/// Picks the instance for the next attempt: instances this message has not failed on yet come
/// first; among those, the one with the fewest unacknowledged messages (so a slow or stuck
/// instance gets less work); ties are broken by rotating with `turn`, so equal instances share
/// the load. Returns `None` when there is no candidate at all.
///
/// An instance already tried is chosen again only when it is the only one left: a retry to
/// the same instance is still better than none (it may have restarted), and its dedup window
/// keeps the handler from running twice.
pub(crate) fn choose(candidates: &[Candidate], tried: &[NodeId], turn: usize) -> Option<NodeId> {
    let untried = candidates.iter().filter(|c| !tried.contains(&c.node));
    pick_least_loaded(untried, turn).or_else(|| pick_least_loaded(candidates.iter(), turn))
}

fn pick_least_loaded<'a>(
    it: impl Iterator<Item = &'a Candidate> + Clone,
    turn: usize,
) -> Option<NodeId> {
    let least = it.clone().map(|c| c.in_flight).min()?;
    let tied: Vec<NodeId> = it
        .filter(|c| c.in_flight == least)
        .map(|c| c.node)
        .collect();
    Some(tied[turn % tied.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: u128, in_flight: usize) -> Candidate {
        Candidate {
            node: NodeId::from_u128(n),
            in_flight,
        }
    }

    #[test]
    fn none_without_candidates() {
        assert_eq!(choose(&[], &[], 0), None);
    }

    #[test]
    fn equal_instances_take_turns() {
        let all = [c(1, 0), c(2, 0), c(3, 0)];
        let picks: Vec<_> = (0..3).map(|t| choose(&all, &[], t)).collect();
        assert_eq!(picks, [1, 2, 3].map(|n| Some(NodeId::from_u128(n))));
    }

    #[test]
    fn least_loaded_wins() {
        let all = [c(1, 5), c(2, 1), c(3, 9)];
        assert_eq!(choose(&all, &[], 7), Some(NodeId::from_u128(2)));
    }

    #[test]
    fn untried_instances_come_first_then_tried_ones() {
        let all = [c(1, 0), c(2, 50)];
        assert_eq!(
            choose(&all, &[NodeId::from_u128(1)], 0),
            Some(NodeId::from_u128(2))
        );
        let all_tried = [NodeId::from_u128(1), NodeId::from_u128(2)];
        assert_eq!(choose(&all, &all_tried, 0), Some(NodeId::from_u128(1)));
    }
}
