//! Channels by the master that carries them, then by slot: a subscriber connection per
//! master, and per slot the unit a migration moves (all of a slot's channels are
//! `sunsubscribe`d together when it leaves). Each channel still gets its own SSUBSCRIBE in
//! the pipeline: one command per channel cannot be refused as CROSSSLOT, and redis-rs
//! pairs one reply per command (a multi-channel SSUBSCRIBE answers once per channel).

use std::collections::BTreeMap;

use super::{slot, Topology};

/// `group`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups<C> {
    /// Master index (into `Topology::masters`) -> slot -> channels, in the order given.
    pub masters: BTreeMap<usize, BTreeMap<u16, Vec<C>>>,
    /// Channels whose slot no master owns: to retry on the next topology.
    pub unowned: Vec<C>,
}

/// Sorts `channels` by owning master and slot.
pub fn group<C: AsRef<[u8]>>(
    topology: &Topology,
    channels: impl IntoIterator<Item = C>,
) -> Groups<C> {
    let mut groups = Groups {
        masters: BTreeMap::new(),
        unowned: Vec::new(),
    };
    for channel in channels {
        let slot = slot(channel.as_ref());
        match topology.owner(slot) {
            Some(master) => groups
                .masters
                .entry(master)
                .or_default()
                .entry(slot)
                .or_default()
                .push(channel),
            None => groups.unowned.push(channel),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::super::tests::master;
    use super::*;

    #[test]
    fn channels_go_to_their_master_and_slot() {
        let topology = Topology::from_masters(vec![
            master("a", 1, &[0..=5460]),
            master("b", 2, &[5461..=10922]),
        ]);
        // foo: 12182 (no owner), bar: 5061 (a), tagged ones share slot 5061 too.
        let groups = group(&topology, ["foo", "bar", "{bar}.x", "{bar}.y", "x{bar}"]);
        assert_eq!(groups.unowned, vec!["foo"]);
        assert_eq!(groups.masters.len(), 1);
        assert_eq!(
            groups.masters[&0][&5061],
            vec!["bar", "{bar}.x", "{bar}.y", "x{bar}"]
        );

        let names: Vec<String> = (0..1000).map(|i| format!("herald:{i}")).collect();
        let groups = group(&topology, names.iter());
        let mut count = groups.unowned.len();
        for (&index, slots) in &groups.masters {
            for (&slot, channels) in slots {
                assert_eq!(topology.owner(slot), Some(index));
                assert!(channels.iter().all(|c| super::super::slot(c) == slot));
                count += channels.len();
            }
        }
        assert_eq!(count, 1000);
        assert!(groups.masters.len() == 2 && !groups.unowned.is_empty());
    }
}
