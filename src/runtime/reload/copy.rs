//! A warm standby's copy of a role's metadata: the raw entries as of the last revision the watch delivered, and, for a coordinator that applies changes itself, its decoded metadata kept beside them.

use crate::coordinator::{BoxError, MetaChange, Snapshot};

/// The raw copy, and the decoded metadata that follows it.
pub(crate) struct WarmCopy<M> {
    snapshot: Snapshot,
    decoded: Decoded<M>,
}

/// Where the decoded metadata kept beside the raw copy stands.
enum Decoded<M> {
    /// None: a takeover decodes the raw copy.
    Absent,
    /// A decode of the raw copy at `revision` runs; `since` are the changes
    /// applied to the raw copy after it, to apply to its result.
    Decoding {
        revision: i64,
        since: Vec<MetaChange>,
    },
    /// Current with the raw copy.
    Ready(M),
}

/// What applying one revision's changes did.
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
            snapshot,
            decoded: Decoded::Absent,
        }
    }

    /// The revision the copy is current at.
    pub(crate) fn revision(&self) -> i64 {
        self.snapshot.revision
    }

    /// The raw copy.
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Applies the changes the watch delivered up to `revision`, in order;
    /// `apply` applies one to the decoded metadata.
    pub(crate) fn apply(
        &mut self,
        revision: i64,
        changes: Vec<MetaChange>,
        mut apply: impl FnMut(&mut M, &MetaChange) -> Result<(), BoxError>,
    ) -> ApplyOutcome {
        if revision <= self.snapshot.revision {
            return ApplyOutcome::Stale;
        }
        self.snapshot.revision = revision;
        let mut outcome = ApplyOutcome::Applied;
        for change in changes {
            self.snapshot.apply(&change);
            match &mut self.decoded {
                Decoded::Absent => {}
                Decoded::Decoding { since, .. } => since.push(change),
                Decoded::Ready(meta) => {
                    if let Err(error) = apply(meta, &change) {
                        self.decoded = Decoded::Absent;
                        outcome = ApplyOutcome::DecodedDropped(error);
                    }
                }
            }
        }
        outcome
    }

    /// Starts keeping decoded metadata: when there is none and no decode
    /// runs, returns the raw copy to decode (the caller decodes it off the
    /// runtime and hands the result to [`decoded`](Self::decoded)).
    pub(crate) fn start_decode(&mut self) -> Option<Snapshot> {
        if !matches!(self.decoded, Decoded::Absent) {
            return None;
        }
        self.decoded = Decoded::Decoding {
            revision: self.snapshot.revision,
            since: Vec::new(),
        };
        Some(self.snapshot.clone())
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
        copy.snapshot().entries.keys().map(String::as_str).collect()
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

    #[test]
    fn changes_during_a_decode_are_applied_to_its_result() {
        let mut copy = loaded(10, &[("a", "1")]);
        let to_decode = copy.start_decode().expect("nothing decoded yet");
        assert_eq!(to_decode.revision, 10);
        assert!(copy.start_decode().is_none(), "one decode at a time");
        assert!(copy.take_decoded().is_none(), "not decoded yet");
        copy.apply(11, vec![put("b", "2"), delete("a")], apply_to_entries);
        copy.decoded(10, Ok(to_decode.entries), apply_to_entries)
            .unwrap();
        assert!(!copy.is_decoding());
        let meta = copy.take_decoded().expect("decoded and current");
        assert_eq!(meta, copy.snapshot().entries);
        assert!(copy.take_decoded().is_none(), "handed over once");
    }

    #[test]
    fn a_ready_decoded_copy_follows_every_change() {
        let mut copy = loaded(10, &[("a", "1")]);
        let to_decode = copy.start_decode().unwrap();
        copy.decoded(10, Ok(to_decode.entries), apply_to_entries)
            .unwrap();
        copy.apply(11, vec![put("a", "9"), put("z", "0")], apply_to_entries);
        assert_eq!(copy.take_decoded().unwrap(), copy.snapshot().entries);
    }

    #[test]
    fn a_change_the_coordinator_cannot_apply_drops_the_decoded_copy_only() {
        let mut copy = loaded(10, &[("a", "1")]);
        let to_decode = copy.start_decode().unwrap();
        copy.decoded(10, Ok(to_decode.entries), apply_to_entries)
            .unwrap();
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
        copy.start_decode().unwrap();
        assert!(
            copy.decoded(10, Err("corrupt".into()), apply_to_entries)
                .is_err()
        );
        assert!(copy.take_decoded().is_none());
        assert!(!copy.is_decoding());
        copy.start_decode().unwrap();
        copy.decoded(7, Ok(Entries::new()), apply_to_entries)
            .unwrap();
        assert!(
            copy.is_decoding(),
            "a result for an older decode is dropped"
        );
    }
}
