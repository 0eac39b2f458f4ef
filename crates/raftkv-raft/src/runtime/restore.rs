//! The apply side of `Raft::restore` (`docs/design/restore.md`): the
//! `RestoreStep` entries of the log are gathered here, in log order, and a
//! `Commit` whose bytes check replaces the state machine's state. Every
//! outcome depends on the log alone (never on this node's history), so every
//! node restores, or refuses, at the same index:
//!
//! - `Begin` opens restore `id` (abandoning any other); `Chunk`s append in
//!   order; a chunk out of order, of another id, or beyond the announced
//!   length drops the open restore; `Commit` closes it, and restores only if
//!   the id, the chunk count, the length and the CRC-32C all match.
//! - All steps of one restore are proposed by one leader in one term, and a
//!   new leader's first entry (its no-op) comes after every entry of earlier
//!   terms: an entry of another term than `Begin`'s abandons the open restore,
//!   since its `Commit` can no longer follow.
//! - While a restore is open (and not dropped) no snapshot is captured
//!   (`Applier::set_capture_held`): a snapshot taken mid-restore would lose the
//!   chunks before it on a node that restarts from it, or installs it, and
//!   that node alone would refuse the `Commit`. Openness is a function of the
//!   log, so no node's snapshot ever falls inside an open restore.
//!
//! The bytes are held in memory (the snapshot store's sinks cannot be read
//! back before they are committed as snapshots, and a committed one would be
//! taken for the node's state at start-up), up to `Config::max_restore_bytes`;
//! a node that would buffer more stops (it cannot refuse alone: the others
//! would restore), and starts once the setting is raised.

use bytes::Bytes;
use raftkv_core::{Entry, EntryPayload, LogIndex, RestoreStep, Term};

use crate::state_machine::{SnapshotCheck, StateMachine};

/// The restore being gathered, if any.
pub(crate) struct Restores {
    open: Option<Open>,
    max_bytes: u64,
    /// Restores carried out so far.
    restored: u64,
}

struct Open {
    id: u64,
    term: Term,
    len: u64,
    crc32c: u32,
    next_seq: u64,
    data: Vec<u8>,
    /// Why it was dropped; its `Commit` is refused with this.
    dropped: Option<String>,
}

/// What applying one entry came to, for the caller that proposed it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Applied; the state machine's response (empty for restore steps).
    Applied(Bytes),
    /// A restore `Commit` that was refused: nothing changed.
    RestoreRefused(String),
}

impl Default for Outcome {
    fn default() -> Outcome {
        Outcome::Applied(Bytes::new())
    }
}

/// What a `Commit` asks for.
enum Step {
    Nothing,
    Restore(Vec<u8>),
    Refused(String),
}

impl Restores {
    pub(crate) fn new(max_bytes: u64) -> Restores {
        Restores { open: None, max_bytes, restored: 0 }
    }

    /// How many restores were carried out (on this run).
    pub(crate) fn restored(&self) -> u64 {
        self.restored
    }

    /// Whether snapshots must wait: a restore is open and may still commit.
    pub(crate) fn holds_captures(&self) -> bool {
        self.open.as_ref().is_some_and(|open| open.dropped.is_none())
    }

    /// The state machine now holds an installed snapshot: no restore was open
    /// at its index (see the module doc), so none is now.
    pub(crate) fn clear(&mut self) {
        self.open = None;
    }

    /// Sees an entry go by: one of another term abandons the open restore.
    fn observe(&mut self, term: Term) {
        if self.open.as_ref().is_some_and(|open| open.term != term) {
            self.open = None;
        }
    }

    fn step(&mut self, term: Term, index: LogIndex, step: &RestoreStep) -> Result<Step, String> {
        self.observe(term);
        match step {
            RestoreStep::Begin { id, len, crc32c } => {
                self.open = Some(Open {
                    id: *id,
                    term,
                    len: *len,
                    crc32c: *crc32c,
                    next_seq: 0,
                    data: Vec::new(),
                    dropped: None,
                });
                Ok(Step::Nothing)
            }
            RestoreStep::Chunk { id, seq, data } => {
                let max_bytes = self.max_bytes;
                let Some(open) = self.open.as_mut().filter(|open| open.dropped.is_none()) else {
                    return Ok(Step::Nothing);
                };
                let held = open.data.len() as u64;
                let dropped = if open.id != *id {
                    Some(format!("a chunk of restore {id:016x} came at {index} while {:016x} was open", open.id))
                } else if *seq != open.next_seq {
                    Some(format!("chunk {seq} came at {index} where chunk {} was expected", open.next_seq))
                } else if held.saturating_add(data.len() as u64) > open.len {
                    Some(format!("chunk {seq} at {index} goes past the announced {} bytes", open.len))
                } else {
                    None
                };
                if let Some(why) = dropped {
                    tracing::warn!(%index, reason = %why, "restore dropped");
                    open.data = Vec::new();
                    open.dropped = Some(why);
                    return Ok(Step::Nothing);
                }
                if held.saturating_add(data.len() as u64) > max_bytes {
                    return Err(format!(
                        "the restore of {} bytes at {index} exceeds this node's max_restore_bytes ({max_bytes}); \
                         raise it (every node must hold the whole restore) and restart the node",
                        open.len
                    ));
                }
                open.data.extend_from_slice(data);
                open.next_seq += 1;
                Ok(Step::Nothing)
            }
            RestoreStep::Commit { id, chunks } => {
                let Some(open) = self.open.take() else {
                    return Ok(Step::Refused(format!("no restore was open when {id:016x}'s commit came at {index}")));
                };
                Ok(if open.id != *id {
                    Step::Refused(format!("restore {:016x} was open when {id:016x}'s commit came at {index}", open.id))
                } else if let Some(why) = open.dropped {
                    Step::Refused(why)
                } else if open.next_seq != *chunks {
                    Step::Refused(format!("{} chunks arrived of the {chunks} the commit names", open.next_seq))
                } else if open.data.len() as u64 != open.len {
                    Step::Refused(format!("{} bytes arrived of the announced {}", open.data.len(), open.len))
                } else if crc32c::crc32c(&open.data) != open.crc32c {
                    Step::Refused(format!(
                        "the bytes' CRC-32C {:08x} differs from the announced {:08x}",
                        crc32c::crc32c(&open.data),
                        open.crc32c
                    ))
                } else {
                    Step::Restore(open.data)
                })
            }
        }
    }
}

/// Applies `entries` in order: runs of ordinary entries go to the state
/// machine's `apply`, restore steps here, and a `Commit` that checks replaces
/// the state. Returns one outcome per entry. An `Err` is a state nothing may
/// be applied to any more: the node must stop.
pub(crate) fn apply_entries(
    state_machine: &mut dyn StateMachine,
    restores: &mut Restores,
    check: Option<&SnapshotCheck>,
    entries: &[Entry],
) -> Result<Vec<Outcome>, String> {
    let mut outcomes = Vec::with_capacity(entries.len());
    let mut run_start = 0;
    for (i, entry) in entries.iter().enumerate() {
        let EntryPayload::Restore(step) = &entry.payload else {
            restores.observe(entry.term);
            continue;
        };
        apply_run(state_machine, &entries[run_start..i], &mut outcomes);
        run_start = i + 1;
        let outcome = match restores.step(entry.term, entry.index, step)? {
            Step::Nothing => Outcome::Applied(Bytes::new()),
            Step::Refused(why) => {
                tracing::warn!(index = %entry.index, reason = %why, "restore refused; the state is unchanged");
                Outcome::RestoreRefused(why)
            }
            Step::Restore(data) => match restore(state_machine, check, &data) {
                Ok(()) => {
                    restores.restored += 1;
                    tracing::info!(index = %entry.index, bytes = data.len(), "state restored through the log");
                    Outcome::Applied(Bytes::new())
                }
                Err(Refusal::Refused(why)) => {
                    tracing::warn!(index = %entry.index, reason = %why, "restore refused; the state is unchanged");
                    Outcome::RestoreRefused(why)
                }
                Err(Refusal::Fatal(why)) => return Err(format!("restore committed at {}: {why}", entry.index)),
            },
        };
        outcomes.push(outcome);
    }
    apply_run(state_machine, &entries[run_start..], &mut outcomes);
    Ok(outcomes)
}

/// Entries without restore steps, to the state machine (one response slot per
/// entry, as `StateMachine::apply` promises).
fn apply_run(state_machine: &mut dyn StateMachine, run: &[Entry], outcomes: &mut Vec<Outcome>) {
    if run.is_empty() {
        return;
    }
    let mut responses = state_machine.apply(run).into_iter();
    outcomes.extend(run.iter().map(|_| Outcome::Applied(responses.next().unwrap_or_default())));
}

enum Refusal {
    /// Nothing changed.
    Refused(String),
    /// The state machine may hold part of the new state.
    Fatal(String),
}

/// Replaces the state with `data`, or changes nothing: with a check, the
/// check decides (a `restore` failing after it passed is fatal, as for an
/// installed snapshot); without one, the state is captured first and put
/// back if `restore` fails.
fn restore(state_machine: &mut dyn StateMachine, check: Option<&SnapshotCheck>, data: &[u8]) -> Result<(), Refusal> {
    if let Some(check) = check {
        let mut reader: &[u8] = data;
        check(&mut reader).map_err(|e| Refusal::Refused(format!("the state machine's check refused it: {e}")))?;
        return state_machine
            .restore(&mut &data[..])
            .map_err(|e| Refusal::Fatal(format!("the check passed but the state machine could not restore: {e}")));
    }
    let mut before = Vec::new();
    state_machine
        .snapshot()
        .write_to(&mut before)
        .map_err(|e| Refusal::Refused(format!("capturing the state to fall back on failed: {e}")))?;
    match state_machine.restore(&mut &data[..]) {
        Ok(()) => Ok(()),
        Err(error) => match state_machine.restore(&mut &before[..]) {
            Ok(()) => Err(Refusal::Refused(format!("the state machine could not restore it: {error}"))),
            Err(back) => Err(Refusal::Fatal(format!(
                "the state machine could not restore it ({error}) nor its previous state ({back})"
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::state_machine::SnapshotSource;

    /// A state machine whose state is the concatenation of the commands.
    #[derive(Default)]
    struct Log(Vec<u8>);
    struct Copy(Vec<u8>);
    impl SnapshotSource for Copy {
        fn write_to(self: Box<Self>, out: &mut dyn io::Write) -> io::Result<()> {
            out.write_all(&self.0)
        }
    }
    impl StateMachine for Log {
        fn apply(&mut self, entries: &[Entry]) -> Vec<Bytes> {
            entries
                .iter()
                .map(|e| {
                    assert!(!matches!(e.payload, EntryPayload::Restore(_)), "a restore step reached apply");
                    if let EntryPayload::Command(data) = &e.payload {
                        self.0.extend_from_slice(data);
                    }
                    Bytes::from(e.index.0.to_string())
                })
                .collect()
        }
        fn snapshot(&mut self) -> Box<dyn SnapshotSource> {
            Box::new(Copy(self.0.clone()))
        }
        fn restore(&mut self, snapshot: &mut dyn io::Read) -> io::Result<()> {
            let mut data = Vec::new();
            snapshot.read_to_end(&mut data)?;
            if data.starts_with(b"bad") {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad state"));
            }
            self.0 = data;
            Ok(())
        }
    }

    fn cmd(term: u64, index: u64, data: &str) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(Bytes::from(data.to_string())),
        }
    }

    fn step(term: u64, index: u64, step: RestoreStep) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Restore(step) }
    }

    /// Begin, chunks of `data` split at `at`, Commit, from index `first` in `term`.
    fn restore_entries(term: u64, first: u64, id: u64, data: &[u8], at: usize) -> Vec<Entry> {
        let begin = RestoreStep::Begin { id, len: data.len() as u64, crc32c: crc32c::crc32c(data) };
        vec![
            step(term, first, begin),
            step(term, first + 1, RestoreStep::Chunk { id, seq: 0, data: Bytes::copy_from_slice(&data[..at]) }),
            step(term, first + 2, RestoreStep::Chunk { id, seq: 1, data: Bytes::copy_from_slice(&data[at..]) }),
            step(term, first + 3, RestoreStep::Commit { id, chunks: 2 }),
        ]
    }

    fn run(sm: &mut Log, restores: &mut Restores, entries: &[Entry]) -> Vec<Outcome> {
        apply_entries(sm, restores, None, entries).unwrap()
    }

    #[test]
    fn a_restore_replaces_the_state_and_later_entries_apply_on_top() {
        let (mut sm, mut restores) = (Log::default(), Restores::new(1 << 20));
        let mut entries = vec![cmd(1, 1, "a")];
        entries.extend(restore_entries(1, 2, 7, b"restored", 3));
        entries.push(cmd(1, 6, "+b"));
        let outcomes = run(&mut sm, &mut restores, &entries);
        assert_eq!(sm.0, b"restored+b");
        assert_eq!(outcomes.len(), entries.len());
        assert_eq!(outcomes[0], Outcome::Applied(Bytes::from("1")));
        assert_eq!(outcomes[4], Outcome::Applied(Bytes::new()));
        assert_eq!(outcomes[5], Outcome::Applied(Bytes::from("6")));
        assert!(!restores.holds_captures());
    }

    /// Each way the bytes can be wrong is refused at `Commit`, and nothing changes.
    #[test]
    fn damaged_restores_are_refused_and_change_nothing() {
        let good = restore_entries(1, 1, 7, b"restored", 3);
        let mut cases: Vec<(Vec<Entry>, &str)> = Vec::new();
        let mut flipped = good.clone();
        flipped[1] = step(1, 2, RestoreStep::Chunk { id: 7, seq: 0, data: Bytes::from("REs") });
        cases.push((flipped, "CRC-32C"));
        let mut gap = good.clone();
        gap[2] = step(1, 3, RestoreStep::Chunk { id: 7, seq: 2, data: Bytes::from("tored") });
        cases.push((gap, "expected"));
        let mut other = good.clone();
        other[2] = step(1, 3, RestoreStep::Chunk { id: 8, seq: 1, data: Bytes::from("tored") });
        cases.push((other, "while"));
        let mut count = good.clone();
        count[3] = step(1, 4, RestoreStep::Commit { id: 7, chunks: 3 });
        cases.push((count, "chunks arrived"));
        let mut short = good.clone();
        short[0] = step(1, 1, RestoreStep::Begin { id: 7, len: 9, crc32c: crc32c::crc32c(b"restored") });
        cases.push((short, "bytes arrived"));
        let mut term = good.clone();
        term[2].term = Term(2);
        cases.push((term, "no restore was open"));
        cases.push((restore_entries(1, 1, 7, b"bad state", 3), "could not restore"));
        for (entries, why) in cases {
            let (mut sm, mut restores) = (Log(b"old".to_vec()), Restores::new(1 << 20));
            let outcomes = run(&mut sm, &mut restores, &entries);
            assert_eq!(sm.0, b"old", "{why}");
            match &outcomes[3] {
                Outcome::RestoreRefused(reason) => assert!(reason.contains(why), "{reason} lacks {why}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_check_refuses_and_a_new_term_abandons() {
        let check: SnapshotCheck = std::sync::Arc::new(|reader: &mut dyn io::Read| {
            let mut data = Vec::new();
            reader.read_to_end(&mut data)?;
            if data.starts_with(b"no") {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "refused by the check"));
            }
            Ok(())
        });
        let (mut sm, mut restores) = (Log(b"old".to_vec()), Restores::new(1 << 20));
        let outcomes =
            apply_entries(&mut sm, &mut restores, Some(&check), &restore_entries(1, 1, 7, b"nope!", 2)).unwrap();
        assert!(matches!(&outcomes[3], Outcome::RestoreRefused(r) if r.contains("refused by the check")));
        assert_eq!(sm.0, b"old");

        // Begin, a chunk, then the next leader's no-op: the restore is gone
        // and snapshots may be captured again.
        let entries = restore_entries(1, 5, 9, b"restored", 3);
        run(&mut sm, &mut restores, &entries[..2]);
        assert!(restores.holds_captures());
        run(&mut sm, &mut restores, &[Entry { term: Term(2), index: LogIndex(7), payload: EntryPayload::Noop }]);
        assert!(!restores.holds_captures());
    }

    #[test]
    fn more_than_max_restore_bytes_stops_the_node() {
        let (mut sm, mut restores) = (Log::default(), Restores::new(4));
        let error = apply_entries(&mut sm, &mut restores, None, &restore_entries(1, 1, 7, b"restored", 3)).unwrap_err();
        assert!(error.contains("max_restore_bytes"), "{error}");
    }
}
