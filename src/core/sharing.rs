//! Which peers a folder is shared with, and the one rule that decides "is folder F shared with
//! device D". A `[[folder]]` without `devices` is shared with every trusted peer; with `devices` it
//! is shared with exactly those (an empty list: with no one, a folder kept on this node only). The
//! Peer actor offers, sends and serves a folder only when this says yes, refuses anything a peer
//! sends for another folder, and the Index ignores records from devices it no longer shares with.

use std::collections::BTreeSet;

use super::DeviceId;

/// The peers one folder is shared with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SharedWith {
    /// No `devices` key: every peer this node trusts (listed, or proving the network key).
    #[default]
    EveryTrustedPeer,
    /// `devices = [...]`: these devices and no others.
    Only(BTreeSet<DeviceId>),
}

impl SharedWith {
    /// Is the folder shared with `device`? The peer is already trusted (its connection was
    /// admitted); this only narrows which folders it sees.
    pub fn includes(&self, device: &DeviceId) -> bool {
        match self {
            SharedWith::EveryTrustedPeer => true,
            SharedWith::Only(devices) => devices.contains(device),
        }
    }

    /// The devices named explicitly (none for `EveryTrustedPeer`).
    pub fn listed(&self) -> impl Iterator<Item = &DeviceId> {
        let listed = match self {
            SharedWith::EveryTrustedPeer => None,
            SharedWith::Only(devices) => Some(devices.iter()),
        };
        listed.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn without_a_device_list_every_trusted_peer_sees_the_folder() {
        let all = SharedWith::EveryTrustedPeer;
        assert!(all.includes(&id(1)));
        assert!(all.includes(&id(200)));
        assert_eq!(all.listed().count(), 0);
    }

    #[test]
    fn with_a_device_list_only_the_listed_peers_see_the_folder() {
        let some = SharedWith::Only([id(1), id(2)].into_iter().collect());
        assert!(some.includes(&id(1)));
        assert!(some.includes(&id(2)));
        assert!(!some.includes(&id(3)));
        assert_eq!(some.listed().copied().collect::<Vec<_>>(), vec![id(1), id(2)]);
    }

    #[test]
    fn an_empty_device_list_shares_the_folder_with_no_one() {
        let none = SharedWith::Only(BTreeSet::new());
        assert!(!none.includes(&id(1)));
        assert!(!none.includes(&id(0)));
    }

    proptest! {
        #[test]
        fn a_device_sees_a_listed_folder_exactly_when_it_is_listed(
            listed in proptest::collection::btree_set(any::<u8>(), 0..8),
            asker in any::<u8>(),
        ) {
            let rule = SharedWith::Only(listed.iter().map(|n| id(*n)).collect());
            prop_assert_eq!(rule.includes(&id(asker)), listed.contains(&asker));
            prop_assert!(SharedWith::EveryTrustedPeer.includes(&id(asker)));
        }
    }
}
