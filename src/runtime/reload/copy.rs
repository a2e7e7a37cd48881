//! A warm standby's copy of a role's metadata: the raw entries as of the last revision the watch delivered, and, for a coordinator that applies changes itself, its decoded metadata kept beside them.

use crate::coordinator::{BoxError, MetaChange, Snapshot};

/// The raw copy, and the decoded metadata that follows it.
pub(crate) struct WarmCopy<M> {
    /// The raw entries; `None` while lent out to be cloned off the runtime
    /// (cloning 100k entries takes a worker thread for tens of
    /// milliseconds, and a takeover needs that thread).
    entries: Option<Snapshot>,
    /// The revision of the last change applied, or held while lent.
    revision: i64,
    /// Changes that arrived while the entries were lent, for their return.
    held: Vec<MetaChange>,
    /// Keys in the entries when they were last here.
    keys: usize,
    decoded: Decoded<M>,
}

/// Where the decoded metadata kept beside the raw copy stands.
enum Decoded<M> {
    /// None: a takeover decodes the raw copy.
    Absent,
    /// A decode of the raw copy at `revision` runs; `since` are the changes
    /// after it, to apply to its result.
    Decoding {
        revision: i64,
        since: Vec<MetaChange>,
    },
    /// Current with the raw copy.
    Ready(M),
}

/// What applying one response's changes did.
#[derive(Debug)]
pub(crate) enum ApplyOutcome {
    /// The copy already holds that revision: nothing changed.
    Stale,
    /// Applied to the raw copy, and to the decoded metadata if there is any.
    Applied,
    /// Applied to the raw copy; the coordinator could not apply a change to
    /// its decoded metadata, which is dropped.
    DecodedDropped(BoxError),
}

impl<M> WarmCopy<M> {
    /// A copy of what a full read found.
    pub(crate) fn new(snapshot: Snapshot) -> Self {
        Self {
            revision: snapshot.revision,
            keys: snapshot.entries.len(),
            entries: Some(snapshot),
            held: Vec::new(),
            decoded: Decoded::Absent,
        }
    }

    /// The revision of the last change the copy holds.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Keys in the raw copy (as of its return, while it is lent).
    pub(crate) fn keys(&self) -> usize {
        self.keys
    }

    /// Applies the changes the watch delivered up to `revision`, in order;
    /// `apply` applies one to the decoded metadata.
    pub(crate) fn apply(
        &mut self,
        revision: i64,
        changes: Vec<MetaChange>,
        mut apply: impl FnMut(&mut M, &MetaChange) -> Result<(), BoxError>,
    ) -> ApplyOutcome {
        if revision <= self.revision {
            return ApplyOutcome::Stale;
        }
        self.revision = revision;
        let mut outcome = ApplyOutcome::Applied;
        for change in changes {
            match &mut self.decoded {
                Decoded::Absent => {}
                Decoded::Decoding { since, .. } => since.push(change.clone()),
                Decoded::Ready(meta) => {
                    if let Err(error) = apply(meta, &change) {
                        self.decoded = Decoded::Absent;
                        outcome = ApplyOutcome::DecodedDropped(error);
                    }
                }
            }
            match &mut self.entries {
                Some(entries) => entries.apply(&change),
                None => self.held.push(change),
            }
        }
        if let Some(entries) = &mut self.entries {
            entries.revision = revision;
            self.keys = entries.entries.len();
        }
        outcome
    }

    /// Lends the raw entries out, to be cloned off the runtime and handed
    /// back with [`give_back`](Self::give_back); `None` while lent.
    pub(crate) fn lend(&mut self) -> Option<Snapshot> {
        self.entries.take()
    }

    /// Takes lent entries back, applying the changes held meanwhile.
    pub(crate) fn give_back(&mut self, mut snapshot: Snapshot) {
        for change in self.held.drain(..) {
            snapshot.apply(&change);
        }
        snapshot.revision = self.revision;
        self.keys = snapshot.entries.len();
        self.entries = Some(snapshot);
    }

    /// Starts keeping decoded metadata: when there is none, no decode runs
    /// and the entries are here, lends them out to be decoded (the caller
    /// clones them off the runtime, hands them back, and hands the decoded
    /// clone to [`decoded`](Self::decoded)).
    pub(crate) fn start_decode(&mut self) -> Option<Snapshot> {
        if !matches!(self.decoded, Decoded::Absent) {
            return None;
        }
        let lent = self.lend()?;
        self.decoded = Decoded::Decoding {
            revision: self.revision,
            since: Vec::new(),
        };
        Some(lent)
    }

    /// Takes the result of the decode started at `revision`, brought up to
    /// the raw copy with the changes applied since. A result for another
    /// decode is dropped; an error leaves no decoded metadata.
    pub(crate) fn decoded(
        &mut self,
        revision: i64,
        result: Result<M, BoxError>,
        mut apply: impl FnMut(&mut M, &MetaChange) -> Result<(), BoxError>,
    ) -> Result<(), BoxError> {
        let Decoded::Decoding {
            revision: started,
            since,
        } = &mut self.decoded
        else {
            return Ok(());
        };
        if *started != revision {
            return Ok(());
        }
        let since = std::mem::take(since);
        self.decoded = Decoded::Absent;
        let mut meta = result?;
        for change in &since {
            apply(&mut meta, change)?;
        }
        self.decoded = Decoded::Ready(meta);
        Ok(())
    }

    /// Whether a decode runs.
    pub(crate) fn is_decoding(&self) -> bool {
        matches!(self.decoded, Decoded::Decoding { .. })
    }

    /// Hands the decoded metadata over, when it is current.
    pub(crate) fn take_decoded(&mut self) -> Option<M> {
        match std::mem::replace(&mut self.decoded, Decoded::Absent) {
            Decoded::Ready(meta) => Some(meta),
            other => {
                self.decoded = other;
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

    fn put(key: &str, value: &str) -> MetaChange {
        MetaChange::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    fn delete(key: &str) -> MetaChange {
        MetaChange::Delete { key: key.into() }
    }

    fn apply_to_entries(meta: &mut Entries, change: &MetaChange) -> Result<(), BoxError> {
        change.apply_to(meta);
        Ok(())
    }

    fn loaded(revision: i64, entries: &[(&str, &str)]) -> WarmCopy<Entries> {
        WarmCopy::new(Snapshot {
            revision,
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        })
    }

    fn keys(copy: &WarmCopy<Entries>) -> Vec<&str> {
        let entries = copy.entries.as_ref().expect("the entries are here");
        entries.entries.keys().map(String::as_str).collect()
    }

    fn entries(copy: &WarmCopy<Entries>) -> Entries {
        copy.entries
            .as_ref()
            .expect("the entries are here")
            .entries
            .clone()
    }

    #[test]
    fn puts_and_deletes_reach_the_raw_copy_and_move_its_revision() {
        let mut copy = loaded(10, &[("a", "1"), ("b", "2")]);
        let applied = copy.apply(12, vec![put("c", "3"), delete("a")], apply_to_entries);
        assert!(matches!(applied, ApplyOutcome::Applied));
        assert_eq!(copy.revision(), 12);
        assert_eq!(keys(&copy), ["b", "c"]);
    }

    #[test]
    fn a_revision_the_copy_holds_changes_nothing() {
        let mut copy = loaded(10, &[("a", "1")]);
        for revision in [9, 10] {
            let applied = copy.apply(revision, vec![delete("a")], apply_to_entries);
            assert!(matches!(applied, ApplyOutcome::Stale));
        }
        assert_eq!(keys(&copy), ["a"]);
        assert_eq!(copy.revision(), 10);
    }

    /// What the reload actor does with a decode it starts: clone the lent
    /// entries, hand them back, decode the clone (here: as they are).
    fn decode_now(copy: &mut WarmCopy<Entries>) {
        let lent = copy.start_decode().expect("nothing decoded yet");
        let revision = lent.revision;
        let clone = lent.clone();
        copy.give_back(lent);
        copy.decoded(revision, Ok(clone.entries), apply_to_entries)
            .unwrap();
    }

    #[test]
    fn changes_while_the_entries_are_lent_are_held_for_their_return() {
        let mut copy = loaded(10, &[("a", "1"), ("b", "2")]);
        let lent = copy.lend().expect("the entries are here");
        assert!(copy.lend().is_none(), "lent once");
        copy.apply(11, vec![delete("a"), put("c", "3")], apply_to_entries);
        assert!(copy.entries.is_none());
        assert_eq!(copy.revision(), 11);
        copy.give_back(lent);
        assert_eq!(keys(&copy), ["b", "c"]);
        assert_eq!(copy.keys(), 2);
        assert_eq!(copy.entries.as_ref().unwrap().revision, 11);
    }

    #[test]
    fn changes_during_a_decode_are_applied_to_its_result() {
        let mut copy = loaded(10, &[("a", "1")]);
        let lent = copy.start_decode().expect("nothing decoded yet");
        assert_eq!(lent.revision, 10);
        assert!(copy.start_decode().is_none(), "one decode at a time");
        assert!(copy.take_decoded().is_none(), "not decoded yet");
        let clone = lent.clone();
        copy.apply(11, vec![put("b", "2"), delete("a")], apply_to_entries);
        copy.give_back(lent);
        copy.decoded(10, Ok(clone.entries), apply_to_entries)
            .unwrap();
        assert!(!copy.is_decoding());
        let meta = copy.take_decoded().expect("decoded and current");
        assert_eq!(meta, entries(&copy));
        assert_eq!(keys(&copy), ["b"]);
        assert!(copy.take_decoded().is_none(), "handed over once");
    }

    #[test]
    fn a_ready_decoded_copy_follows_every_change() {
        let mut copy = loaded(10, &[("a", "1")]);
        decode_now(&mut copy);
        copy.apply(11, vec![put("a", "9"), put("z", "0")], apply_to_entries);
        assert_eq!(copy.take_decoded().unwrap(), entries(&copy));
    }

    #[test]
    fn a_change_the_coordinator_cannot_apply_drops_the_decoded_copy_only() {
        let mut copy = loaded(10, &[("a", "1")]);
        decode_now(&mut copy);
        let refuse = |_: &mut Entries, _: &MetaChange| -> Result<(), BoxError> { Err("no".into()) };
        let applied = copy.apply(11, vec![put("b", "2")], refuse);
        assert!(matches!(applied, ApplyOutcome::DecodedDropped(_)));
        assert_eq!(keys(&copy), ["a", "b"]);
        assert!(copy.take_decoded().is_none());
        assert!(
            copy.start_decode().is_some(),
            "decoded again from the raw copy"
        );
    }

    #[test]
    fn a_failed_or_superseded_decode_leaves_nothing_decoded() {
        let mut copy = loaded(10, &[("a", "1")]);
        let lent = copy.start_decode().unwrap();
        copy.give_back(lent);
        assert!(
            copy.decoded(10, Err("corrupt".into()), apply_to_entries)
                .is_err()
        );
        assert!(copy.take_decoded().is_none());
        assert!(!copy.is_decoding());
        let lent = copy.start_decode().unwrap();
        copy.give_back(lent);
        copy.decoded(7, Ok(Entries::new()), apply_to_entries)
            .unwrap();
        assert!(
            copy.is_decoding(),
            "a result for an older decode is dropped"
        );
    }
}
