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
    least_loaded(
        candidates
            .iter()
            .map(|c| (c.node, c.in_flight, !tried.contains(&c.node))),
        turn,
    )
}

/// The rule of [`choose`] over `(instance, unacknowledged messages, untried)` triples: the
/// least loaded of the untried ones if there are any, else of all; ties broken by `turn`.
/// One pass finds the least load and how many share it; only a tie takes a second pass, to
/// the tied one `turn` falls on. Nothing is allocated (every message's copy comes here).
pub(crate) fn least_loaded<T: Copy>(
    candidates: impl Iterator<Item = (T, usize, bool)> + Clone,
    turn: usize,
) -> Option<T> {
    let (mut untried, mut all) = (Least::default(), Least::default());
    for (id, load, fresh) in candidates.clone() {
        all.see(id, load);
        if fresh {
            untried.see(id, load);
        }
    }
    let only_untried = untried.first.is_some();
    let least = if only_untried { untried } else { all };
    if least.ties <= 1 {
        return least.first;
    }
    candidates
        .filter(|&(_, load, fresh)| load == least.load && (fresh || !only_untried))
        .map(|(id, ..)| id)
        .nth(turn % least.ties)
}

/// The least load [`least_loaded`] has seen, how many candidates have it, and the first.
#[derive(Clone, Copy)]
struct Least<T> {
    load: usize,
    ties: usize,
    first: Option<T>,
}

impl<T> Default for Least<T> {
    fn default() -> Self {
        Self {
            load: 0,
            ties: 0,
            first: None,
        }
    }
}

impl<T> Least<T> {
    fn see(&mut self, id: T, load: usize) {
        if self.first.is_none() || load < self.load {
            *self = Self {
                load,
                ties: 1,
                first: Some(id),
            };
        } else if load == self.load {
            self.ties += 1;
        }
    }
}

/// Picks the instance for a message with partition key `key`, by rendezvous
/// (highest-random-weight) hashing: every instance gets a weight from the key and its node id,
/// and the heaviest wins. All messages with one key go to one instance while it lives; when
/// it goes, only its keys move (each to its next-heaviest instance), and a new instance takes
/// only the keys it now weighs most for.
///
/// Instances this message failed on are skipped while another is left, as in [`choose`].
pub(crate) fn choose_for_key(nodes: &[NodeId], tried: &[NodeId], key: &str) -> Option<NodeId> {
    let heaviest = |it: &mut dyn Iterator<Item = &NodeId>| {
        it.max_by_key(|n| (weight(key, **n), n.as_u128())).copied()
    };
    heaviest(&mut nodes.iter().filter(|n| !tried.contains(n)))
        .or_else(|| heaviest(&mut nodes.iter()))
}

/// The rendezvous weight of `node` for `key`: a fixed hash (FNV-1a of the key, mixed with the
/// node id by SplitMix64's finaliser), the same in every process and version, so every sender
/// maps a key to the same instance.
pub(crate) fn weight(key: &str, node: NodeId) -> u64 {
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let id = node.as_u128();
    mix(mix(h ^ id as u64) ^ (id >> 64) as u64)
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

    fn owners(nodes: &[NodeId], keys: usize) -> Vec<NodeId> {
        (0..keys)
            .map(|k| choose_for_key(nodes, &[], &format!("customer-{k}")).expect("an owner"))
            .collect()
    }

    #[test]
    fn keys_spread_evenly_and_stay_put() {
        let nodes: Vec<NodeId> = (1..=4).map(NodeId::from_u128).collect();
        let first = owners(&nodes, 4000);
        assert_eq!(
            first,
            owners(&nodes, 4000),
            "the same key always maps the same way"
        );
        for node in &nodes {
            let share = first.iter().filter(|o| *o == node).count();
            assert!((800..1200).contains(&share), "{node}: {share} of 4000 keys");
        }
    }

    #[test]
    fn removing_or_adding_an_instance_moves_only_its_share() {
        let nodes: Vec<NodeId> = (1..=4).map(NodeId::from_u128).collect();
        let before = owners(&nodes, 4000);
        let after_removal = owners(&nodes[1..], 4000);
        for (b, a) in before.iter().zip(&after_removal) {
            if *b != nodes[0] {
                assert_eq!(a, b, "a key of a surviving instance moved");
            }
        }
        let mut grown = nodes.clone();
        grown.push(NodeId::from_u128(5));
        let after_add = owners(&grown, 4000);
        let moved: Vec<_> = before
            .iter()
            .zip(&after_add)
            .filter(|(b, a)| b != a)
            .collect();
        assert!(
            moved.iter().all(|(_, a)| **a == grown[4]),
            "keys only move to the new instance"
        );
        assert!(
            (600..1000).contains(&moved.len()),
            "{} of 4000 keys moved",
            moved.len()
        );
    }

    #[test]
    fn a_key_skips_instances_it_failed_on() {
        let nodes: Vec<NodeId> = (1..=3).map(NodeId::from_u128).collect();
        let owner = choose_for_key(&nodes, &[], "k").expect("an owner");
        let next = choose_for_key(&nodes, &[owner], "k").expect("another");
        assert_ne!(owner, next);
        assert_eq!(choose_for_key(&nodes, &nodes, "k"), Some(owner));
        assert_eq!(choose_for_key(&[], &[], "k"), None);
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

    #[test]
    fn ties_among_untried_instances_take_turns_past_a_tried_one() {
        let all = [c(1, 0), c(2, 0), c(3, 1), c(4, 0)];
        let tried = [NodeId::from_u128(1)];
        let picks: Vec<_> = (0..3).map(|t| choose(&all, &tried, t)).collect();
        assert_eq!(picks, [2, 4, 2].map(|n| Some(NodeId::from_u128(n))));
        // Every one tried: all of them, the tied ones in turn.
        let tried = [1, 2, 3, 4].map(NodeId::from_u128);
        let picks: Vec<_> = (0..3).map(|t| choose(&all, &tried, t)).collect();
        assert_eq!(picks, [1, 2, 4].map(|n| Some(NodeId::from_u128(n))));
    }
}
