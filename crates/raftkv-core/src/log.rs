//! The core's view of the log: every entry after the last compaction point.
//!
//! Invariant (decided, see ARCHITECTURE.md): the core holds the entries after its
//! compaction point in memory, so that every protocol decision is synchronous and
//! deterministic. The runtime keeps the durable copy in its `LogStore` and bounds
//! memory by taking snapshots and calling `Core::compact_log`.

use crate::types::{Entry, LogId, LogIndex, Term};

#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    /// The last entry folded into a snapshot (or `LogId::ZERO`); entries start after it.
    start: LogId,
    /// `entries[i]` has index `start.index + 1 + i`.
    entries: Vec<Entry>,
}

impl RaftLog {
    /// Builds the log from a compaction point and the contiguous entries after it.
    /// Returns an error message when the entries are not contiguous.
    pub fn new(start: LogId, entries: Vec<Entry>) -> Result<RaftLog, String> {
        for (offset, entry) in entries.iter().enumerate() {
            let expected = LogIndex(start.index.0 + 1 + offset as u64);
            if entry.index != expected {
                return Err(format!("log entries not contiguous: expected index {expected}, found {}", entry.index));
            }
        }
        Ok(RaftLog { start, entries })
    }

    pub fn start(&self) -> LogId {
        self.start
    }

    /// Index of the first entry still held (one past the compaction point).
    pub fn first_index(&self) -> LogIndex {
        self.start.index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.start.index.0 + self.entries.len() as u64)
    }

    pub fn last_log_id(&self) -> LogId {
        self.entries.last().map(Entry::log_id).unwrap_or(self.start)
    }

    /// Term of the entry at `index`, if known: entries held, or the compaction point.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.first_index().0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Whether the log holds `id` (or compacted past it with that id).
    pub fn matches(&self, id: LogId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// Entries in `[from, to]`, clamped to what is held.
    pub fn slice(&self, from: LogIndex, to: LogIndex) -> &[Entry] {
        let first = self.first_index().0;
        let lo = from.0.max(first) - first;
        let hi = (to.0.min(self.last_index().0) + 1).saturating_sub(first);
        if lo >= hi {
            return &[];
        }
        &self.entries[lo as usize..hi as usize]
    }

    /// Appends one entry; the caller guarantees it is the next index and that
    /// its term is no lower than the last one (terms never go down along a
    /// log: a leader appends in its own term, the highest it has seen, and a
    /// follower only a well-formed leader's entries after a matching one).
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index().next(), "log append must be contiguous");
        let last = self.last_log_id();
        assert!(entry.term >= last.term, "log append of term {} after {last}: terms must not go down", entry.term);
        self.entries.push(entry);
    }

    /// Drops every entry at or after `index`. Never called at or below the commit index.
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(index > self.start.index, "truncation below the compaction point");
        let keep = (index.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
    }

    /// Forgets entries up to and including `upto`, if held (callers compact
    /// only what is applied, hence committed).
    pub fn compact_to(&mut self, upto: LogIndex) {
        if upto <= self.start.index {
            return;
        }
        let Some(term) = self.term_at(upto) else {
            return;
        };
        let drop = (upto.0 - self.start.index.0) as usize;
        self.entries.drain(..drop);
        self.start = LogId::new(term, upto);
    }

    /// The entries themselves, for tests that need a log the core would never build.
    #[cfg(test)]
    pub fn entries_mut_for_tests(&mut self) -> &mut Vec<Entry> {
        &mut self.entries
    }

    /// Replaces the whole log with a snapshot's compaction point.
    pub fn reset_to(&mut self, start: LogId) {
        self.entries.clear();
        self.start = start;
    }

    /// Last index at or below `index` whose term is at most `term` (etcd's
    /// `findConflictByTerm`), clamped to the compaction point.
    pub fn last_index_with_term_at_most(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut probe = index.min(self.last_index());
        while probe > self.start.index {
            match self.term_at(probe) {
                Some(t) if t <= term => return probe,
                _ => probe = probe.prev(),
            }
        }
        self.start.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryPayload;

    fn entry(term: u64, index: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Noop }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| entry(*t, i as u64 + 1)).collect();
        RaftLog::new(LogId::ZERO, entries).unwrap()
    }

    #[test]
    fn slice_is_clamped_to_held_entries() {
        let mut log = log_with_terms(&[1, 1, 2, 3]);
        assert_eq!(log.slice(LogIndex(2), LogIndex(3)).len(), 2);
        assert_eq!(log.slice(LogIndex(0), LogIndex(9)).len(), 4);
        log.compact_to(LogIndex(2));
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term_at(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term_at(LogIndex(1)), None);
        assert_eq!(log.slice(LogIndex(1), LogIndex(3)).len(), 1);
    }

    #[test]
    fn conflict_hint_skips_whole_terms() {
        let log = log_with_terms(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(log.last_index_with_term_at_most(LogIndex(7), Term(3)), LogIndex(5));
        assert_eq!(log.last_index_with_term_at_most(LogIndex(9), Term(4)), LogIndex(7));
        assert_eq!(log.last_index_with_term_at_most(LogIndex(5), Term(1)), LogIndex(2));
        assert_eq!(log.last_index_with_term_at_most(LogIndex(5), Term(0)), LogIndex(0));
    }

    #[test]
    fn non_contiguous_entries_are_refused() {
        assert!(RaftLog::new(LogId::ZERO, vec![entry(1, 1), entry(1, 3)]).is_err());
    }
}
