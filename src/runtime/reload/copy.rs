//! A warm standby's copy of a role's metadata, one copy only: the raw entries for a coordinator that decodes them whole at a takeover, or, for one that applies changes itself, its decoded metadata alone.

use crate::coordinator::{BoxError, MetaChange, Snapshot};
use crate::runtime::reload::follow::Change;

/// The copy, its revision and its key count.
pub(crate) struct WarmCopy<M> {
    /// The revision of the last change applied (also while the entries
    /// are lent, decoded, or released).
    revision: i64,
    /// Keys in the role's metadata at `revision`: counted at the read, then
    /// moved by each change.
    keys: usize,
    holds: Holds<M>,
}

/// What the copy holds.
enum Holds<M> {
    /// The raw entries; `None` while lent out to be cloned off the runtime
    /// (cloning 100k entries takes a worker thread for tens of
    /// milliseconds, and a takeover needs that thread), with the changes
    /// that arrived meanwhile, for their return.
    Raw {
        entries: Option<Snapshot>,
        held: Vec<MetaChange>,
    },
    /// The raw entries went to a decode of the copy at `revision`, for good:
    /// a coordinator that applies changes itself keeps only its decoded
    /// metadata. `since` are the changes after it, to apply to its result.
    Decoding {
        revision: i64,
        since: Vec<MetaChange>,
    },
    /// The decoded metadata, current.
    Decoded(M),
    /// Nothing: the decoded metadata went to a term of this node, or its
    /// decode or a change to it failed. Only a read of the metadata makes
    /// the copy whole again.
    Released,
}

/// What applying one response's changes did.
#[derive(Debug)]
pub(crate) enum ApplyOutcome {
    /// The copy already holds that revision: nothing changed.
    Stale,
    /// Applied to what the copy holds (or counted only, when it holds nothing).
    Applied,
    /// The coordinator could not apply a change to its decoded metadata,
    /// which is dropped: the copy is released.
    DecodedDropped(BoxError),
}

impl<M> WarmCopy<M> {
    /// A copy of what a full read found.
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            revision: snapshot.revision,
            keys: snapshot.entries.len(),
            holds: Holds::Raw {
                entries: Some(snapshot),
                held: Vec::new(),
            },
        }
    }

    /// The revision of the last change the copy holds.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Keys in the role's metadata at the copy's revision.
    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    /// Whether the copy holds nothing (see [`Holds::Released`]).
    pub(crate) fn is_released(&self) -> bool {
        matches!(self.holds, Holds::Released)
    }

    /// Applies the changes of one watch response that are newer than the
    /// copy, in order; `apply` applies one to the decoded metadata.
    pub(crate) fn apply(
        &mut self,
        changes: Vec<Change>,
        mut apply: impl FnMut(&mut M, &MetaChange) -> Result<(), BoxError>,
    ) -> ApplyOutcome {
        let Some(revision) = changes.last().map(|change| change.revision) else {
            return ApplyOutcome::Stale;
        };
        if revision <= self.revision {
            return ApplyOutcome::Stale;
        }
        let after = std::mem::replace(&mut self.revision, revision);
        let mut outcome = ApplyOutcome::Applied;
        for Change {
            revision,
            change,
            created,
        } in changes
        {
            if revision <= after {
                continue;
            }
            self.keys = match change {
                MetaChange::Put { .. } if created => self.keys + 1,
                MetaChange::Put { .. } => self.keys,
                // etcd reports the deletion of a key that exists only.
                MetaChange::Delete { .. } => self.keys.saturating_sub(1),
            };
            match &mut self.holds {
                Holds::Raw {
                    entries: Some(entries),
                    ..
                } => entries.apply(&change),
                Holds::Raw { held, .. } => held.push(change),
                Holds::Decoding { since, .. } => since.push(change),
                Holds::Decoded(meta) => {
                    if let Err(error) = apply(meta, &change) {
                        self.holds = Holds::Released;
                        outcome = ApplyOutcome::DecodedDropped(error);
                    }
                }
                Holds::Released => {}
            }
        }
        if let Holds::Raw {
            entries: Some(entries),
            ..
        } = &mut self.holds
        {
            entries.revision = revision;
            self.keys = entries.entries.len();
        }
        outcome
    }

    /// Lends the raw entries out, to be cloned off the runtime and handed
    /// back with [`give_back`](Self::give_back); `None` while lent, or when
    /// the copy holds no raw entries.
    pub(crate) fn lend(&mut self) -> Option<Snapshot> {
        match &mut self.holds {
            Holds::Raw { entries, .. } => entries.take(),
            _ => None,
        }
    }

    /// Takes lent entries back, applying the changes held meanwhile.
    pub(crate) fn give_back(&mut self, mut snapshot: Snapshot) {
        let Holds::Raw {
            entries: entries @ None,
            held,
        } = &mut self.holds
        else {
            return;
        };
        for change in held.drain(..) {
            snapshot.apply(&change);
        }
        snapshot.revision = self.revision;
        self.keys = snapshot.entries.len();
        *entries = Some(snapshot);
    }

    /// Gives the raw entries away to be decoded, for good (the caller
    /// hands the result to [`decoded`](Self::decoded)): `None` unless the
    /// copy holds them, here.
    pub(crate) fn start_decode(&mut self) -> Option<Snapshot> {
        let lent = self.lend()?;
        self.holds = Holds::Decoding {
            revision: self.revision,
            since: Vec::new(),
        };
        Some(lent)
    }

    /// Takes the result of the decode started at `revision`, brought up to
    /// date with the changes applied since. A result for another decode is
    /// dropped; an error releases the copy.
    pub(crate) fn decoded(
        &mut self,
        revision: i64,
        result: Result<M, BoxError>,
        mut apply: impl FnMut(&mut M, &MetaChange) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        let Holds::Decoding {
            revision: started,
            since,
        } = &mut self.holds
        else {
            return Ok(());
        };
        if *started != revision {
            return Ok(());
        }
        let since = std::mem::take(since);
        self.holds = Holds::Released;
        let mut meta = result?;
        for change in &since {
            apply(&mut meta, change)?;
        }
        self.holds = Holds::Decoded(meta);
        Ok(())
    }

    /// Whether a decode runs.
    pub(crate) fn is_decoding(&self) -> bool {
        matches!(self.holds, Holds::Decoding { .. })
    }

    /// Hands the decoded metadata over, when it is current: the copy is
    /// released.
    pub(crate) fn take_decoded(&mut self) -> Option<M> {
        match std::mem::replace(&mut self.holds, Holds::Released) {
            Holds::Decoded(meta) => Some(meta),
            other => {
                self.holds = other;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Entries = BTreeMap<String, Vec<u8>>;

    /// A put at `revision`; `created` when the key did not exist.
    fn put(revision: i64, key: &str, value: &str, created: bool) -> Change {
        Change {
            revision,
            change: MetaChange::Put {
                key: key.into(),
                value: value.into(),
            },
            created,
        }
    }

    fn delete(revision: i64, key: &str) -> Change {
        Change {
            revision,
            change: MetaChange::Delete { key: key.into() },
            created: false,
        }
    }

    fn apply_to_entries(meta: &mut Entries, change: &MetaChange) -> Result<(), BoxError> {
        change.apply_to(meta);
        Ok(())
    }

    fn entries_of(pairs: &[(&str, &str)]) -> Entries {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn loaded(revision: i64, pairs: &[(&str, &str)]) -> WarmCopy<Entries> {
        WarmCopy::new(Snapshot {
            revision,
            entries: entries_of(pairs),
        })
    }

    fn raw(copy: &WarmCopy<Entries>) -> &Snapshot {
        match &copy.holds {
            Holds::Raw {
                entries: Some(entries),
                ..
            } => entries,
            _ => panic!("the raw entries are not here"),
        }
    }

    fn keys(copy: &WarmCopy<Entries>) -> Vec<&str> {
        raw(copy).entries.keys().map(String::as_str).collect()
    }

    /// What the reload actor does with a decode it starts: decode the
    /// entries it was given (here: keep them as they are).
    fn decode_now(copy: &mut WarmCopy<Entries>) {
        let given = copy.start_decode().expect("the raw entries are here");
        copy.decoded(given.revision, Ok(given.entries), apply_to_entries)
            .unwrap();
    }

    #[test]
    fn puts_and_deletes_reach_the_raw_copy_and_move_its_revision() {
        let mut copy = loaded(10, &[("a", "1"), ("b", "2")]);
        let applied = copy.apply(
            vec![put(12, "c", "3", true), delete(12, "a")],
            apply_to_entries,
        );
        assert!(matches!(applied, ApplyOutcome::Applied));
        assert_eq!(copy.revision(), 12);
        assert_eq!(raw(&copy).revision, 12);
        assert_eq!(keys(&copy), ["b", "c"]);
        assert_eq!(copy.keys(), 2);
    }

    #[test]
    fn a_revision_the_copy_holds_changes_nothing() {
        let mut copy = loaded(10, &[("a", "1")]);
        for revision in [9, 10] {
            let applied = copy.apply(vec![delete(revision, "a")], apply_to_entries);
            assert!(matches!(applied, ApplyOutcome::Stale));
        }
        let applied = copy.apply(
            vec![delete(10, "a"), put(11, "b", "", true)],
            apply_to_entries,
        );
        assert!(matches!(applied, ApplyOutcome::Applied));
        assert_eq!(keys(&copy), ["a", "b"], "only what is newer than the copy");
        assert_eq!(copy.revision(), 11);
    }

    #[test]
    fn changes_while_the_entries_are_lent_are_held_for_their_return() {
        let mut copy = loaded(10, &[("a", "1"), ("b", "2")]);
        let lent = copy.lend().expect("the entries are here");
        assert!(copy.lend().is_none(), "lent once");
        copy.apply(
            vec![
                delete(11, "a"),
                put(11, "c", "3", true),
                put(11, "c", "4", false),
            ],
            apply_to_entries,
        );
        assert_eq!(copy.revision(), 11);
        assert_eq!(copy.keys(), 2, "counted while lent");
        copy.give_back(lent);
        assert_eq!(raw(&copy).entries, entries_of(&[("b", "2"), ("c", "4")]));
        assert_eq!(copy.keys(), 2);
        assert_eq!(raw(&copy).revision, 11);
    }

    #[test]
    fn a_decode_takes_the_raw_entries_for_good_and_its_result_gets_the_changes_since() {
        let mut copy = loaded(10, &[("a", "1")]);
        let given = copy.start_decode().expect("the raw entries are here");
        assert_eq!(given.revision, 10);
        assert!(copy.start_decode().is_none(), "one decode at a time");
        assert!(copy.lend().is_none(), "no raw entries are kept beside");
        assert!(copy.take_decoded().is_none(), "not decoded yet");
        assert!(copy.is_decoding());
        copy.apply(
            vec![put(11, "b", "2", true), delete(11, "a")],
            apply_to_entries,
        );
        copy.decoded(10, Ok(given.entries), apply_to_entries)
            .unwrap();
        assert!(!copy.is_decoding());
        assert_eq!(copy.keys(), 1);
        let meta = copy.take_decoded().expect("decoded and current");
        assert_eq!(meta, entries_of(&[("b", "2")]));
        assert!(copy.take_decoded().is_none(), "handed over once");
    }

    #[test]
    fn a_decoded_copy_follows_every_change() {
        let mut copy = loaded(10, &[("a", "1")]);
        decode_now(&mut copy);
        copy.apply(
            vec![put(11, "a", "9", false), put(12, "z", "0", true)],
            apply_to_entries,
        );
        assert_eq!((copy.revision(), copy.keys()), (12, 2));
        assert_eq!(
            copy.take_decoded().unwrap(),
            entries_of(&[("a", "9"), ("z", "0")])
        );
    }

    #[test]
    fn handed_over_the_copy_is_released_and_still_counts_revisions_and_keys() {
        let mut copy = loaded(10, &[("a", "1")]);
        decode_now(&mut copy);
        assert!(!copy.is_released());
        copy.take_decoded().expect("decoded");
        assert!(copy.is_released());
        copy.apply(
            vec![
                put(11, "b", "2", true),
                delete(12, "a"),
                put(13, "b", "3", false),
            ],
            apply_to_entries,
        );
        assert!(copy.is_released());
        assert_eq!((copy.revision(), copy.keys()), (13, 1));
        assert!(copy.start_decode().is_none() && copy.lend().is_none());
    }

    #[test]
    fn a_change_the_coordinator_cannot_apply_releases_the_copy() {
        let mut copy = loaded(10, &[("a", "1")]);
        decode_now(&mut copy);
        let refuse = |_: &mut Entries, _: &MetaChange| -> Result<(), BoxError> { Err("no".into()) };
        let applied = copy.apply(vec![put(11, "b", "2", true)], refuse);
        assert!(matches!(applied, ApplyOutcome::DecodedDropped(_)));
        assert!(copy.is_released());
        assert!(copy.take_decoded().is_none());
        assert_eq!((copy.revision(), copy.keys()), (11, 2));
    }

    #[test]
    fn a_failed_decode_releases_the_copy_and_a_result_for_another_is_dropped() {
        let mut copy = loaded(10, &[("a", "1")]);
        copy.start_decode().unwrap();
        copy.decoded(7, Ok(Entries::new()), apply_to_entries)
            .unwrap();
        assert!(copy.is_decoding(), "a result for another decode is dropped");
        assert!(
            copy.decoded(10, Err("corrupt".into()), apply_to_entries)
                .is_err()
        );
        assert!(copy.take_decoded().is_none());
        assert!(!copy.is_decoding());
        assert!(copy.is_released());
    }
}
