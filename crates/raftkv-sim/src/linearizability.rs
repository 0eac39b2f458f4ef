//! Linearizability checker for key-value register histories.
//!
//! Given a history of client operations (`Put`, `Delete`, `Get`, `Cas`) on a
//! key-value store, [`check_history`] decides whether there is a legal
//! sequential order of the operations that is consistent with their real-time
//! order and with the sequential specification of a register per key.
//!
//! # Model
//!
//! Every key starts absent (`None`). `Put` sets the value, `Delete` removes
//! it, `Get` returns the current value and `Cas { expected, new }` succeeds
//! (and stores `new`) iff the current value equals `expected`; a failed CAS
//! changes nothing. Operations on different keys never interact, so the
//! history is partitioned per key (linearizability is compositional) and each
//! key's sub-history is checked independently, which keeps the search small.
//!
//! # Algorithm
//!
//! This is the Wing & Gong search with Lowe's memoization, as implemented by
//! Porcupine. The operations of one key are turned into call and return
//! events sorted by time and threaded onto doubly linked lists. A DFS scans
//! the events: at a call event it tries to linearize that operation at the
//! current point (apply it to the register and check its recorded output);
//! on success the call and its return are *lifted* out of the list, the
//! previous state is pushed onto an undo stack, and the scan restarts at the
//! head. Reaching a return event means the operation returning there should
//! already have been linearized, so the search backtracks: it pops the undo
//! stack, *unlifts* that operation (dancing links, O(1)) and continues with
//! the next event after it. A memo of visited configurations - the bitset of
//! linearized operations (`Vec<u64>`) plus the register state - prunes
//! configurations that were already explored, because the rest of the search
//! depends only on them.
//!
//! # Real-time order and equal timestamps
//!
//! Operation `A` must be linearized before `B` only if `A.complete <
//! B.invoke`. When `A.complete == B.invoke` the two are treated as
//! *concurrent* (either order is allowed). This is the conservative choice
//! for simulated clocks with coarse resolution: it can only accept more
//! histories, never reject a correct one. It is implemented by sorting call
//! events before return events that carry the same timestamp.
//!
//! # Indeterminate operations
//!
//! An operation whose `output` is `None` is indeterminate (the client timed
//! out, or its node crashed): it may have taken effect at any instant after
//! its invocation, or never, and any output is acceptable. Indeterminate
//! `Get`s have no effect and are dropped before the search. Other
//! indeterminate operations are *optional*: their return is at +infinity, so
//! they never constrain other operations, and the search succeeds as soon as
//! every completed operation is linearized, so an optional write may take
//! effect anywhere after its invocation or not at all. (`complete` is ignored
//! for indeterminate operations.) An operation with a recorded output but no
//! completion time is accepted too: it must take effect, but its response
//! time is unknown, so its return is also placed at +infinity.
//!
//! Plain Porcupine search degrades badly with optional operations, because
//! each one stays concurrent with everything invoked after it. Refuting a
//! history (the important case for a bug hunt) then means trying every
//! pending write at every point. The search therefore adds reductions that
//! keep it exact (each is argued where it is implemented):
//!
//! * completed operations are tried before optional ones at each point, and
//!   the memo also prunes a configuration when a visited one with the same
//!   completed operations and state used a *subset* of its optional ones;
//! * an optional operation is only linearized if it changes the state and
//!   the very next operation depends on that change (e.g. a read that
//!   returns the written value), since otherwise it could be dropped or moved
//!   later;
//! * pending optional operations with identical inputs are used in
//!   invocation order.
//!
//! Malformed inputs are handled without panicking: an output whose kind does
//! not match the input kind (e.g. a `Put` answered with `Get`) can never be
//! linearized and is reported as a violation, and a completion time earlier
//! than the invocation time is treated as equal to it. Operation `id`s are
//! only used for reporting; the checker does not require them to be unique.
//!
//! # Limits
//!
//! The problem is NP-complete in general. The search is bounded by a step
//! budget per key; when it is exceeded the result is
//! [`CheckResult::Unknown`]. A step is one memo lookup or one backtrack;
//! cheaper work (skipping an event that fails a filter, comparing memo
//! entries) is charged at 1/16 step per item, so the budget bounds running
//! time (in release builds the default budget is roughly a second). The memo
//! stores at most one entry per step, so memory is bounded by the budget too
//! (about `budget * (ops_per_key / 8 + 100)` bytes in the worst case). The
//! search is fast when few operations are concurrent; it grows exponentially
//! with the number of clients with overlapping operations, and refutations
//! get expensive when a key has many indeterminate writes of values drawn
//! from a small domain. Writing unique values keeps them cheap.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// The value stored under a key.
pub type Value = u64;

/// What a client asked the store to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpInput {
    /// Store `value` under the key.
    Put { value: Value },
    /// Remove the key.
    Delete,
    /// Read the key.
    Get,
    /// Compare-and-set: if the current value equals `expected`, store `new`;
    /// otherwise change nothing. expected None = key must be absent.
    Cas { expected: Option<Value>, new: Value },
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutput {
    /// Acknowledgement of a `Put`.
    Put,
    /// Acknowledgement of a `Delete`.
    Delete,
    /// Result of a `Get`; `None` means the key was absent.
    Get { value: Option<Value> },
    /// Result of a `Cas`: whether the swap happened.
    Cas { ok: bool },
}

/// One client operation in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Identifier, unique per history; used only for reporting.
    pub id: u64,
    /// The client that issued the operation; informational only.
    pub client: u64,
    /// The key the operation acts on.
    pub key: u64,
    /// The request.
    pub input: OpInput,
    /// None = indeterminate (client timed out / node crashed): the op may
    /// have taken effect at any point after `invoke`, or never.
    pub output: Option<OpOutput>,
    /// Time the client sent the request (simulated ms or ns).
    pub invoke: u64,
    /// None when indeterminate; Some(t) with t >= invoke otherwise.
    pub complete: Option<u64>,
}

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// A key whose sub-history has no linearization; `ops` lists that key's
    /// operations (sorted by invoke) for a readable report.
    NotLinearizable { key: u64, ops: Vec<Operation> },
    /// The search exceeded the step budget on `key`; neither proven nor
    /// refuted.
    Unknown { key: u64 },
}

/// The step budget per key used by [`check_history`].
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 5_000_000;

/// Checks `ops` with the default budget of [`DEFAULT_MAX_STEPS_PER_KEY`]
/// search steps per key. See [`check_history_with_budget`].
pub fn check_history(ops: &[Operation]) -> CheckResult {
    check_history_with_budget(ops, DEFAULT_MAX_STEPS_PER_KEY)
}

/// Checks whether `ops` is linearizable, spending at most
/// `max_steps_per_key` search steps on each key.
///
/// Keys are checked in ascending order. A definite violation is more useful
/// than an inconclusive answer, so the first key found to be non-linearizable
/// is reported even if an earlier key ran out of budget; `Unknown` (with the
/// smallest such key) is returned only when no key is refuted.
pub fn check_history_with_budget(ops: &[Operation], max_steps_per_key: u64) -> CheckResult {
    let mut by_key: BTreeMap<u64, Vec<&Operation>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key).or_default().push(op);
    }

    let mut first_unknown = None;
    for (&key, key_ops) in &by_key {
        match check_key(key_ops, max_steps_per_key) {
            KeyOutcome::Linearizable => {}
            KeyOutcome::NotLinearizable => {
                let mut report: Vec<Operation> = key_ops.iter().map(|op| (*op).clone()).collect();
                report.sort_by_key(|op| (op.invoke, op.id));
                return CheckResult::NotLinearizable { key, ops: report };
            }
            KeyOutcome::BudgetExceeded => {
                first_unknown.get_or_insert(key);
            }
        }
    }

    match first_unknown {
        Some(key) => CheckResult::Unknown { key },
        None => CheckResult::Linearizable,
    }
}

/// The verdict on a single key's sub-history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyOutcome {
    Linearizable,
    NotLinearizable,
    BudgetExceeded,
}

/// Applies `input` to the register `state` and checks it against the
/// recorded `output`. Returns the new state if the operation may take effect
/// at this point, or `None` if its output contradicts the state.
/// `output == None` (indeterminate) accepts any result.
fn apply(state: Option<Value>, input: &OpInput, output: Option<&OpOutput>) -> Option<Option<Value>> {
    match (input, output) {
        (OpInput::Put { value }, None | Some(OpOutput::Put)) => Some(Some(*value)),
        (OpInput::Delete, None | Some(OpOutput::Delete)) => Some(None),
        (OpInput::Get, None) => Some(state),
        (OpInput::Get, Some(OpOutput::Get { value })) => (*value == state).then_some(state),
        (OpInput::Cas { expected, new }, None) => Some(if state == *expected { Some(*new) } else { state }),
        (OpInput::Cas { expected, new }, Some(OpOutput::Cas { ok })) => {
            let matches = state == *expected;
            if matches != *ok {
                None
            } else if matches {
                Some(Some(*new))
            } else {
                Some(state)
            }
        }
        // An output of the wrong kind can never be produced by this input.
        _ => None,
    }
}

/// A point in time; `Infinite` sorts after every finite time, which is what
/// the derived ordering gives because of the variant order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Time {
    Finite(u64),
    Infinite,
}

/// Sentinel "no node" index.
const NIL: usize = usize::MAX;
/// Head sentinel of the list of completed ops' call and return events.
const MAIN_HEAD: usize = 0;
/// Head sentinel of the list of optional (indeterminate) ops' call events.
const OPT_HEAD: usize = 1;

/// One event node: a call or return event of operation `op`.
#[derive(Debug, Clone, Copy)]
struct Node {
    op: usize,
    is_call: bool,
    /// Rank of the event in the global time order.
    pos: usize,
    /// The other event of the same operation, or `NIL` for the call of an
    /// optional op (its return would be at infinity and is never needed).
    partner: usize,
    prev: usize,
    next: usize,
}

/// Two doubly linked event lists sharing one arena, supporting O(1) removal
/// and exact undo in LIFO order (Knuth's dancing links), which is what the
/// DFS needs.
///
/// The main list holds the call and return events of completed ops. The
/// optional list holds only the call events of indeterminate ops, whose
/// returns are at +infinity. Keeping them apart lets the search try
/// completed ops before optional ones at every point.
struct EventLists {
    nodes: Vec<Node>,
}

impl EventLists {
    /// Removes `n` from its list but keeps its own links so that
    /// [`EventLists::relink`] can put it back.
    fn unlink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    /// Reinserts `n` where it was; valid only while undoing in LIFO order.
    fn relink(&mut self, n: usize) {
        let Node { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }

    /// Removes a call event and its matching return event, if any.
    fn lift(&mut self, call: usize) {
        let ret = self.nodes[call].partner;
        self.unlink(call);
        if ret != NIL {
            self.unlink(ret);
        }
    }

    /// Undoes [`EventLists::lift`]; the removals are reverted in reverse
    /// order so each node sees exactly the neighbours it had when removed.
    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].partner;
        if ret != NIL {
            self.relink(ret);
        }
        self.relink(call);
    }

    fn next(&self, n: usize) -> usize {
        self.nodes[n].next
    }
}

fn set_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

fn clear_bit(bits: &mut [u64], i: usize) {
    bits[i / 64] &= !(1 << (i % 64));
}

fn get_bit(bits: &[u64], i: usize) -> bool {
    bits[i / 64] & (1 << (i % 64)) != 0
}

/// Whether bitset `a` is a subset of bitset `b` (same length).
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// A small, fast, non-cryptographic hasher (FxHash-style multiply-rotate
/// with a final avalanche). The memo hashes many short word slices and has
/// no adversarial input, so SipHash's DoS resistance is not worth its cost.
#[derive(Default)]
struct FastHasher {
    hash: u64,
}

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }

    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weakly mixed and hash tables pick
        // buckets by them, so fold the high bits back in.
        let mut z = self.hash;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }
}

/// Work is counted in units of 1/16 step: a memo lookup or a backtrack (a
/// hash of a bitset, or undoing a lift) costs a full step, while skipping an
/// event that fails a cheap filter or comparing one memo entry costs a unit.
const UNITS_PER_STEP: u64 = 16;

/// The pending-write marker of a configuration: `Some(before)` while the
/// most recently linearized op is optional, `before` being the register
/// state it replaced. See [`Search::depends_on_pending`].
type Pending = Option<Option<Value>>;

/// Memo of explored search configurations, with subsumption.
///
/// A configuration is the set `R` of linearized completed ops, the set `O`
/// of linearized optional ops, the register state, and the pending marker
/// `W`. Porcupine caches exact `(R ∪ O, state)` pairs. We also use that a
/// configuration with a subset of `O` (and the same `R`, state and `W`, or
/// no `W` at all) can do everything the other can: which events are enabled
/// depends only on `R` (optional ops return at infinity, so they never block
/// anything), having used fewer optional ops leaves more available (with
/// identical inputs used in order, an earlier twin can stand in for a later
/// one), no `W` means fewer restrictions, and success depends only on `R`.
/// So a configuration is pruned when a visited one dominates it; any
/// linearization from the pruned one maps step by step to one from the
/// dominating one, which the search explores. Without this, every pending
/// indeterminate write would double the space a refutation must exhaust.
///
/// For each `(R, state, W)` the memo keeps the antichain of minimal `O`s
/// seen, stored flat with `opt_words` words per set.
struct Memo {
    opt_words: usize,
    map: HashMap<Box<[u64]>, Vec<u64>, BuildHasherDefault<FastHasher>>,
    key_buf: Vec<u64>,
}

/// Appends a two-word encoding of an optional value.
fn push_value(out: &mut Vec<u64>, value: Option<Value>) {
    match value {
        Some(v) => out.extend_from_slice(&[1, v]),
        None => out.extend_from_slice(&[0, 0]),
    }
}

impl Memo {
    /// `opt_words` must be non-zero because sets are split with
    /// `chunks_exact`.
    fn new(req_words: usize, opt_words: usize) -> Self {
        Memo { opt_words, map: HashMap::default(), key_buf: Vec::with_capacity(req_words + 5) }
    }

    /// Fills `key_buf` with the flat key for `(R, state, W)`; flat so that
    /// lookups can borrow it without allocating.
    fn fill_key(&mut self, required: &[u64], state: Option<Value>, pending: Pending) {
        self.key_buf.clear();
        self.key_buf.extend_from_slice(required);
        push_value(&mut self.key_buf, state);
        match pending {
            Some(before) => {
                self.key_buf.push(1);
                push_value(&mut self.key_buf, before);
            }
            None => self.key_buf.extend_from_slice(&[0, 0, 0]),
        }
    }

    /// Whether a set stored under the current `key_buf` is a subset of
    /// `optional`; adds the number of comparisons to `units`.
    fn dominated(&self, optional: &[u64], units: &mut u64) -> bool {
        let Some(sets) = self.map.get(self.key_buf.as_slice()) else {
            return false;
        };
        sets.chunks_exact(self.opt_words).any(|set| {
            *units += 1;
            is_subset(set, optional)
        })
    }

    /// Records the configuration and returns true, unless it is dominated
    /// by a visited one. Adds the comparisons made to `units`.
    fn visit(
        &mut self,
        required: &[u64],
        optional: &[u64],
        state: Option<Value>,
        pending: Pending,
        units: &mut u64,
    ) -> bool {
        if pending.is_some() {
            // The same configuration without the pending-write restriction
            // dominates this one.
            self.fill_key(required, state, None);
            if self.dominated(optional, units) {
                return false;
            }
        }
        self.fill_key(required, state, pending);
        if self.dominated(optional, units) {
            return false;
        }
        let w = self.opt_words;
        let sets = self.map.entry(self.key_buf.as_slice().into()).or_default();
        // Stored supersets of the new set are now redundant (anything they
        // would prune, the new set prunes too); dropping them keeps the
        // antichain, and therefore later scans, short.
        let mut kept = 0;
        for read in 0..sets.len() / w {
            if !is_subset(optional, &sets[read * w..(read + 1) * w]) {
                sets.copy_within(read * w..(read + 1) * w, kept * w);
                kept += 1;
            }
        }
        sets.truncate(kept * w);
        sets.extend_from_slice(optional);
        true
    }
}

/// Where the DFS scan currently is: the next unvisited node of each list.
///
/// The scan walks the main list over calls of completed ops; every node it
/// passes is a call, because it stops at the first return. Once there (the
/// "barrier": the earliest deadline among pending completed ops), it walks
/// the optional list over calls ranked before the barrier.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    main: usize,
    opt: usize,
}

/// One undo record: the lifted call node and what to restore.
struct Frame {
    call: usize,
    prev_state: Option<Value>,
    prev_pending: Pending,
    /// The scan position when the op was lifted, to resume right after it.
    cursor: Cursor,
}

/// Outcome of trying to linearize one op at the current point.
enum Attempt {
    Lifted,
    Rejected,
    /// The op was lifted and it was the last completed op.
    AllLinearized,
}

/// The DFS over linearization points for one key.
struct Search<'a> {
    ops: Vec<&'a Operation>,
    /// Dense index of each op in `required_bits` or `optional_bits`.
    slot: Vec<usize>,
    /// For an optional op, the latest earlier-invoked optional op with an
    /// identical input.
    prev_twin: Vec<Option<usize>>,
    /// Rank of each op's call event.
    call_pos: Vec<usize>,
    /// Ops that depend on an optional write exactly when it produces a given
    /// value: completed gets returning it, and completed successful CASes
    /// and optional CASes expecting it. Sorted by call rank.
    wanted: HashMap<Option<Value>, Vec<usize>>,
    /// Completed failed CASes by expected value: they depend on an optional
    /// write that moves the register away from that value. Sorted by call
    /// rank.
    failed_cas: HashMap<Option<Value>, Vec<usize>>,
    lists: EventLists,
    /// Linearized completed ops (`R`), indexed by `slot`.
    required_bits: Vec<u64>,
    /// Linearized optional ops (`O`), indexed by `slot`.
    optional_bits: Vec<u64>,
    memo: Memo,
    state: Option<Value>,
    pending: Pending,
    stack: Vec<Frame>,
    required_left: usize,
    /// Work done so far, in units of 1/`UNITS_PER_STEP` step.
    units: u64,
}

impl Search<'_> {
    fn is_required(&self, i: usize) -> bool {
        self.ops[i].output.is_some()
    }

    fn is_lifted(&self, i: usize) -> bool {
        let bits = if self.is_required(i) { &self.required_bits } else { &self.optional_bits };
        get_bit(bits, self.slot[i])
    }

    /// Whether op `i`, run on the current state, depends on the optional op
    /// linearized just before it, which changed the state from `before`.
    ///
    /// Partial-order reduction: if the next op does not depend on it, the
    /// optional op can be dropped (the next op is a blind write, or a CAS
    /// that would have succeeded anyway) or swapped after it (a read that
    /// would have returned the same result on `before`), leaving every
    /// completed op's view unchanged and using no more optional ops; an
    /// optional op that changes nothing can always be dropped. Repeating
    /// this turns any linearization into one where each optional op changes
    /// the state and is directly followed by an op that depends on it, so
    /// only those are searched.
    fn depends_on_pending(&self, i: usize, before: Option<Value>) -> bool {
        let op = self.ops[i];
        match (&op.input, &op.output) {
            (OpInput::Put { .. } | OpInput::Delete, _) => false,
            // A completed read or CAS depends on the change if its recorded
            // output was impossible on the previous state.
            (_, Some(output)) => apply(before, &op.input, Some(output)).is_none(),
            // An optional CAS depends on it only if it now succeeds where
            // it would have failed (failing on both means no effect).
            (OpInput::Cas { expected, .. }, None) => self.state == *expected && before != *expected,
            // Optional gets are removed before the search.
            (OpInput::Get, None) => false,
        }
    }

    /// Cheap necessary condition for linearizing optional op `x` now, moving
    /// the register from the current state to `produced`: some other
    /// unlinearized op that is enabled (called before `barrier`) must be
    /// able to run next and depend on that change. Without it, lifting `x`
    /// would lead straight to a dead end.
    fn is_useful(&mut self, x: usize, produced: Option<Value>, barrier: usize) -> bool {
        let candidate_lists = [self.wanted.get(&produced), self.failed_cas.get(&self.state)];
        for candidates in candidate_lists.into_iter().flatten() {
            for &r in candidates {
                self.units += 1;
                if self.call_pos[r] >= barrier {
                    break;
                }
                if r != x && !self.is_lifted(r) {
                    return true;
                }
            }
        }
        false
    }

    /// Tries to linearize the op whose call event is `node` right now.
    /// `barrier` is the rank of the first pending return of a completed op;
    /// it is only needed (and only exact) for optional ops.
    fn attempt(&mut self, node: usize, cursor: Cursor, barrier: usize) -> Attempt {
        let i = self.lists.nodes[node].op;
        let op = self.ops[i];
        let required = op.output.is_some();
        // Symmetry reduction: pending optional ops with identical inputs are
        // interchangeable once invoked, so they are used in invocation order
        // (any linearization can be relabelled that way, since the k-th use
        // of an input comes after at least k of their invocations).
        let earlier_twin_unused = self.prev_twin[i].is_some_and(|twin| !get_bit(&self.optional_bits, self.slot[twin]));
        if earlier_twin_unused {
            return Attempt::Rejected;
        }
        if self.pending.is_some_and(|before| !self.depends_on_pending(i, before)) {
            return Attempt::Rejected;
        }
        let Some(new_state) = apply(self.state, &op.input, op.output.as_ref()) else {
            return Attempt::Rejected;
        };
        if !required && (new_state == self.state || !self.is_useful(i, new_state, barrier)) {
            return Attempt::Rejected;
        }
        let new_pending = if required { None } else { Some(self.state) };

        let bits = if required { &mut self.required_bits } else { &mut self.optional_bits };
        set_bit(bits, self.slot[i]);
        self.units = self.units.saturating_add(UNITS_PER_STEP);
        let is_new = self.memo.visit(&self.required_bits, &self.optional_bits, new_state, new_pending, &mut self.units);
        if !is_new {
            let bits = if required { &mut self.required_bits } else { &mut self.optional_bits };
            clear_bit(bits, self.slot[i]);
            return Attempt::Rejected;
        }

        self.stack.push(Frame { call: node, prev_state: self.state, prev_pending: self.pending, cursor });
        self.state = new_state;
        self.pending = new_pending;
        self.lists.lift(node);
        if required {
            self.required_left -= 1;
            if self.required_left == 0 {
                return Attempt::AllLinearized;
            }
        }
        Attempt::Lifted
    }

    /// Undoes the most recent linearization and says where to resume the
    /// scan, or returns `None` if nothing is left to undo.
    fn backtrack(&mut self) -> Option<Cursor> {
        let frame = self.stack.pop()?;
        self.units = self.units.saturating_add(UNITS_PER_STEP);
        self.lists.unlift(frame.call);
        let i = self.lists.nodes[frame.call].op;
        if self.is_required(i) {
            clear_bit(&mut self.required_bits, self.slot[i]);
            self.required_left += 1;
        } else {
            clear_bit(&mut self.optional_bits, self.slot[i]);
        }
        self.state = frame.prev_state;
        self.pending = frame.prev_pending;
        // The lists are exactly as they were when the op was lifted, so the
        // saved cursor is valid; step past the op that was just undone.
        let next = self.lists.next(frame.call);
        let mut cursor = frame.cursor;
        if self.is_required(i) {
            cursor.main = next;
        } else {
            cursor.opt = next;
        }
        Some(cursor)
    }

    fn start(&self) -> Cursor {
        Cursor { main: self.lists.next(MAIN_HEAD), opt: self.lists.next(OPT_HEAD) }
    }

    /// Runs the DFS to completion or until the budget is spent.
    fn run(&mut self, max_steps: u64) -> KeyOutcome {
        let max_units = max_steps.saturating_mul(UNITS_PER_STEP);
        let mut cursor = self.start();
        loop {
            self.units += 1;
            if self.units > max_units {
                return KeyOutcome::BudgetExceeded;
            }
            let main = cursor.main;
            let main_is_call = main != NIL && self.lists.nodes[main].is_call;
            // Falling off the end of the main list cannot happen while a
            // completed op is pending, but is handled as "no bound".
            let main_pos = if main == NIL { usize::MAX } else { self.lists.nodes[main].pos };
            // Completed ops are tried first: configurations using fewer
            // optional ops then tend to be visited first and prune, via the
            // memo, those that use more.
            let (node, optional) = if main_is_call {
                (main, false)
            } else if cursor.opt != NIL && self.lists.nodes[cursor.opt].pos < main_pos {
                (cursor.opt, true)
            } else {
                // The first pending return, with nothing left to try: that
                // op should have been linearized already, so undo the
                // latest choice.
                match self.backtrack() {
                    Some(next) => {
                        cursor = next;
                        continue;
                    }
                    None => return KeyOutcome::NotLinearizable,
                }
            };
            match self.attempt(node, cursor, main_pos) {
                Attempt::AllLinearized => return KeyOutcome::Linearizable,
                Attempt::Lifted => cursor = self.start(),
                Attempt::Rejected if optional => cursor.opt = self.lists.next(node),
                Attempt::Rejected => cursor.main = self.lists.next(node),
            }
        }
    }
}

/// Searches for a linearization of one key's operations.
fn check_key(key_ops: &[&Operation], max_steps: u64) -> KeyOutcome {
    // Indeterminate reads have no effect on the register and accept any
    // output, so they can never help or hurt a linearization.
    let ops: Vec<&Operation> =
        key_ops.iter().copied().filter(|op| !(op.output.is_none() && op.input == OpInput::Get)).collect();

    // Completed ("required") and indeterminate ("optional") ops get separate
    // dense indices into separate bitsets, so the memo can compare the
    // optional parts by inclusion.
    let mut slot = Vec::with_capacity(ops.len());
    let (mut required_total, mut optional_total) = (0usize, 0usize);
    for op in &ops {
        if op.output.is_some() {
            slot.push(required_total);
            required_total += 1;
        } else {
            slot.push(optional_total);
            optional_total += 1;
        }
    }
    if required_total == 0 {
        // Only optional writes remain, and "none of them took effect" is a
        // valid explanation.
        return KeyOutcome::Linearizable;
    }

    // Build the events. At equal times calls sort before returns so that
    // operations touching at a single instant count as concurrent; the
    // operation index breaks remaining ties to keep the search deterministic.
    // Optional ops get no return event: it would be at +infinity.
    let mut events: Vec<(Time, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        // `false` sorts before `true`, so the flag means "is a return".
        events.push((Time::Finite(op.invoke), false, i));
        if op.output.is_some() {
            let ret_time = match op.complete {
                Some(t) => Time::Finite(t.max(op.invoke)),
                None => Time::Infinite,
            };
            events.push((ret_time, true, i));
        }
    }
    events.sort_unstable();

    let sentinel = Node { op: NIL, is_call: false, pos: NIL, partner: NIL, prev: NIL, next: NIL };
    let mut nodes = vec![sentinel; 2];
    let mut call_node = vec![NIL; ops.len()];
    let mut ret_node = vec![NIL; ops.len()];
    let (mut main_tail, mut opt_tail) = (MAIN_HEAD, OPT_HEAD);
    for (pos, &(_, is_return, op)) in events.iter().enumerate() {
        let n = nodes.len();
        let tail = if ops[op].output.is_some() { &mut main_tail } else { &mut opt_tail };
        nodes[*tail].next = n;
        nodes.push(Node { op, is_call: !is_return, pos, partner: NIL, prev: *tail, next: NIL });
        *tail = n;
        if is_return {
            ret_node[op] = n;
        } else {
            call_node[op] = n;
        }
    }
    for op in 0..ops.len() {
        if ret_node[op] != NIL {
            nodes[call_node[op]].partner = ret_node[op];
            nodes[ret_node[op]].partner = call_node[op];
        }
    }
    // Every op has exactly one call event, so every entry was filled in.
    let call_pos: Vec<usize> = call_node.iter().map(|&n| nodes[n].pos).collect();

    // Index the ops by what they need from an optional write (see
    // `Search::is_useful`) and chain identical optional inputs (see
    // `Search::attempt`), both in call order.
    let mut wanted: HashMap<Option<Value>, Vec<usize>> = HashMap::new();
    let mut failed_cas: HashMap<Option<Value>, Vec<usize>> = HashMap::new();
    let mut prev_twin = vec![None; ops.len()];
    let mut last_with_input: HashMap<(u8, Option<Value>, Value), usize> = HashMap::new();
    for &(_, is_return, i) in &events {
        if is_return {
            continue;
        }
        let op = ops[i];
        match (&op.input, &op.output) {
            (OpInput::Get, Some(OpOutput::Get { value })) => {
                wanted.entry(*value).or_default().push(i);
            }
            (OpInput::Cas { expected, .. }, Some(OpOutput::Cas { ok: true }) | None) => {
                wanted.entry(*expected).or_default().push(i);
            }
            (OpInput::Cas { expected, .. }, Some(OpOutput::Cas { ok: false })) => {
                failed_cas.entry(*expected).or_default().push(i);
            }
            _ => {}
        }
        if op.output.is_none() {
            let input_key = match op.input {
                OpInput::Put { value } => (0, None, value),
                OpInput::Delete => (1, None, 0),
                OpInput::Get => (2, None, 0),
                OpInput::Cas { expected, new } => (3, expected, new),
            };
            prev_twin[i] = last_with_input.insert(input_key, i);
        }
    }

    let required_bits = vec![0u64; required_total.div_ceil(64)];
    // At least one word, even without optional ops: see `Memo::new`.
    let optional_bits = vec![0u64; optional_total.div_ceil(64).max(1)];
    let memo = Memo::new(required_bits.len(), optional_bits.len());
    let mut search = Search {
        stack: Vec::with_capacity(ops.len()),
        ops,
        slot,
        prev_twin,
        call_pos,
        wanted,
        failed_cas,
        lists: EventLists { nodes },
        required_bits,
        optional_bits,
        memo,
        state: None,
        pending: None,
        required_left: required_total,
        units: 0,
    };
    search.run(max_steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    // ---------------------------------------------------------------------
    // Helpers for building histories by hand.
    // ---------------------------------------------------------------------

    fn done(id: u64, key: u64, input: OpInput, output: OpOutput, inv: u64, comp: u64) -> Operation {
        Operation { id, client: id, key, input, output: Some(output), invoke: inv, complete: Some(comp) }
    }

    fn put(id: u64, key: u64, value: Value, inv: u64, comp: u64) -> Operation {
        done(id, key, OpInput::Put { value }, OpOutput::Put, inv, comp)
    }

    fn get(id: u64, key: u64, value: Option<Value>, inv: u64, comp: u64) -> Operation {
        done(id, key, OpInput::Get, OpOutput::Get { value }, inv, comp)
    }

    fn del(id: u64, key: u64, inv: u64, comp: u64) -> Operation {
        done(id, key, OpInput::Delete, OpOutput::Delete, inv, comp)
    }

    fn cas(id: u64, key: u64, expected: Option<Value>, new: Value, ok: bool, inv: u64, comp: u64) -> Operation {
        done(id, key, OpInput::Cas { expected, new }, OpOutput::Cas { ok }, inv, comp)
    }

    fn pending(id: u64, key: u64, input: OpInput, inv: u64) -> Operation {
        Operation { id, client: id, key, input, output: None, invoke: inv, complete: None }
    }

    fn pending_put(id: u64, key: u64, value: Value, inv: u64) -> Operation {
        pending(id, key, OpInput::Put { value }, inv)
    }

    fn assert_not_lin(result: CheckResult, expected_key: u64) {
        match result {
            CheckResult::NotLinearizable { key, ops } => {
                assert_eq!(key, expected_key);
                assert!(ops.iter().all(|op| op.key == expected_key));
                assert!(ops.windows(2).all(|w| w[0].invoke <= w[1].invoke));
            }
            other => panic!("expected NotLinearizable on key {expected_key}, got {other:?}"),
        }
    }

    // ---------------------------------------------------------------------
    // Hand-written histories.
    // ---------------------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        assert_eq!(check_history(&[]), CheckResult::Linearizable);
    }

    #[test]
    fn sequential_put_then_get() {
        let h = [put(1, 0, 7, 0, 10), get(2, 0, Some(7), 20, 30)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn get_on_fresh_key_sees_absent() {
        assert_eq!(check_history(&[get(1, 0, None, 0, 1)]), CheckResult::Linearizable);
        assert_not_lin(check_history(&[get(1, 0, Some(0), 0, 1)]), 0);
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        let h = [put(1, 0, 1, 0, 10), put(2, 0, 2, 20, 30), get(3, 0, Some(1), 40, 50)];
        let result = check_history(&h);
        assert_not_lin(result.clone(), 0);
        if let CheckResult::NotLinearizable { ops, .. } = result {
            assert_eq!(ops.iter().map(|op| op.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        }
    }

    #[test]
    fn concurrent_get_may_see_old_or_new_value() {
        for seen in [Some(1), Some(2)] {
            let h = [put(1, 0, 1, 0, 10), put(2, 0, 2, 20, 40), get(3, 0, seen, 25, 35)];
            assert_eq!(check_history(&h), CheckResult::Linearizable, "get saw {seen:?}");
        }
    }

    #[test]
    fn concurrent_gets_cannot_disagree_with_their_order() {
        // Two sequential reads during one concurrent write: the second read
        // must not go back to the old value once the first saw the new one.
        let h = [put(1, 0, 1, 0, 10), put(2, 0, 2, 20, 100), get(3, 0, Some(2), 30, 40), get(4, 0, Some(1), 50, 60)];
        assert_not_lin(check_history(&h), 0);
        let ok = [put(1, 0, 1, 0, 10), put(2, 0, 2, 20, 100), get(3, 0, Some(1), 30, 40), get(4, 0, Some(2), 50, 60)];
        assert_eq!(check_history(&ok), CheckResult::Linearizable);
    }

    #[test]
    fn read_of_never_written_value() {
        let h = [put(1, 0, 1, 0, 10), get(2, 0, Some(99), 5, 15)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn indeterminate_put_observed_later() {
        let h = [pending_put(1, 0, 5, 10), get(2, 0, Some(5), 100, 110)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn indeterminate_put_observed_before_its_invoke() {
        let h = [get(1, 0, Some(5), 0, 5), pending_put(2, 0, 5, 10)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn indeterminate_put_never_observed() {
        let h = [
            put(1, 0, 1, 0, 10),
            pending_put(2, 0, 2, 20),
            get(3, 0, Some(1), 30, 40),
            get(4, 0, Some(1), 1_000, 1_010),
        ];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn indeterminate_put_takes_effect_at_most_once() {
        // Once the later put of 3 is visible, the pending put of 2 may land
        // after it, but the register cannot then return to 3.
        let h = [
            pending_put(1, 0, 2, 0),
            put(2, 0, 3, 10, 20),
            get(3, 0, Some(3), 30, 40),
            get(4, 0, Some(2), 50, 60),
            get(5, 0, Some(3), 70, 80),
        ];
        assert_not_lin(check_history(&h), 0);
        let ok = [
            pending_put(1, 0, 2, 0),
            put(2, 0, 3, 10, 20),
            get(3, 0, Some(3), 30, 40),
            get(4, 0, Some(2), 50, 60),
            get(5, 0, Some(2), 70, 80),
        ];
        assert_eq!(check_history(&ok), CheckResult::Linearizable);
    }

    #[test]
    fn indeterminate_gets_are_ignored() {
        let h = [pending(1, 0, OpInput::Get, 0), put(2, 0, 1, 10, 20), get(3, 0, Some(1), 30, 40)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
        // A history of nothing but indeterminate operations is trivially fine.
        let only_pending = [pending(1, 0, OpInput::Get, 0), pending_put(2, 0, 1, 0)];
        assert_eq!(check_history(&only_pending), CheckResult::Linearizable);
    }

    #[test]
    fn indeterminate_cas_follows_register_semantics() {
        // The pending CAS can only succeed if the key is absent, which it is
        // before the put of 1 - so observing 9 after that put is explained
        // only if the CAS ran first, which would make the get of 1 stale.
        let h = [
            pending(1, 0, OpInput::Cas { expected: None, new: 9 }, 0),
            put(2, 0, 1, 10, 20),
            get(3, 0, Some(9), 30, 40),
        ];
        assert_not_lin(check_history(&h), 0);
        let ok = [
            pending(1, 0, OpInput::Cas { expected: Some(1), new: 9 }, 0),
            put(2, 0, 1, 10, 20),
            get(3, 0, Some(9), 30, 40),
        ];
        assert_eq!(check_history(&ok), CheckResult::Linearizable);
    }

    #[test]
    fn identical_indeterminate_puts_each_take_effect_at_most_once() {
        // Seeing 5 twice around a put of 1 needs two separate writes of 5.
        let reads = [get(3, 0, Some(5), 10, 20), put(4, 0, 1, 30, 40), get(5, 0, Some(5), 50, 60)];
        let mut two = vec![pending_put(1, 0, 5, 0), pending_put(2, 0, 5, 0)];
        two.extend(reads.iter().cloned());
        assert_eq!(check_history(&two), CheckResult::Linearizable);
        let mut one = vec![pending_put(1, 0, 5, 0)];
        one.extend(reads.iter().cloned());
        assert_not_lin(check_history(&one), 0);
    }

    #[test]
    fn indeterminate_write_can_explain_a_failed_cas() {
        // The CAS expecting 1 failed although 1 was written, so the pending
        // put of 2 must have landed first; later reads must then see 2.
        let base = [put(1, 0, 1, 0, 10), pending_put(2, 0, 2, 15), cas(3, 0, Some(1), 3, false, 20, 30)];
        let mut ok = base.to_vec();
        ok.push(get(4, 0, Some(2), 40, 50));
        assert_eq!(check_history(&ok), CheckResult::Linearizable);
        let mut stale = base.to_vec();
        stale.push(get(4, 0, Some(1), 40, 50));
        assert_not_lin(check_history(&stale), 0);
        let without_pending = [put(1, 0, 1, 0, 10), cas(3, 0, Some(1), 3, false, 20, 30)];
        assert_not_lin(check_history(&without_pending), 0);
    }

    #[test]
    fn chained_indeterminate_ops() {
        // 9 can only appear if the pending put of 4 lands and then the
        // pending CAS from 4 to 9 does.
        let h = [
            pending_put(1, 0, 4, 0),
            pending(2, 0, OpInput::Cas { expected: Some(4), new: 9 }, 0),
            get(3, 0, Some(9), 10, 20),
        ];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
        let wrong_order = [
            pending_put(1, 0, 4, 0),
            pending(2, 0, OpInput::Cas { expected: Some(4), new: 9 }, 0),
            get(3, 0, Some(9), 10, 20),
            get(4, 0, Some(4), 30, 40),
        ];
        assert_not_lin(check_history(&wrong_order), 0);
    }

    #[test]
    fn indeterminate_delete_observed() {
        let h =
            [put(1, 0, 1, 0, 10), pending(2, 0, OpInput::Delete, 20), get(3, 0, None, 30, 40), get(4, 0, None, 50, 60)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
        let flip_flop = [
            put(1, 0, 1, 0, 10),
            pending(2, 0, OpInput::Delete, 20),
            get(3, 0, None, 30, 40),
            get(4, 0, Some(1), 50, 60),
        ];
        assert_not_lin(check_history(&flip_flop), 0);
    }

    #[test]
    fn concurrent_cas_both_succeeding_from_absent() {
        let h = [cas(1, 0, None, 1, true, 0, 10), cas(2, 0, None, 2, true, 5, 15)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn concurrent_cas_one_wins() {
        let h = [cas(1, 0, None, 1, true, 0, 10), cas(2, 0, None, 2, false, 5, 15), get(3, 0, Some(1), 20, 30)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn failed_cas_must_see_a_different_value() {
        let h = [put(1, 0, 4, 0, 10), cas(2, 0, Some(4), 5, false, 20, 30)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn delete_then_get_absent() {
        let h = [put(1, 0, 1, 0, 10), del(2, 0, 20, 30), get(3, 0, None, 40, 50)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn get_after_delete_returning_old_value() {
        let h = [put(1, 0, 1, 0, 10), del(2, 0, 20, 30), get(3, 0, Some(1), 40, 50)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn mismatched_output_kind_is_a_violation() {
        let h = [done(1, 0, OpInput::Put { value: 1 }, OpOutput::Get { value: None }, 0, 1)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        // The get is invoked exactly when the put completes, so it may be
        // ordered before the put and see the key absent.
        let h = [put(1, 0, 1, 0, 10), get(2, 0, None, 10, 20)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
        // One tick later the put strictly precedes the get.
        let h = [put(1, 0, 1, 0, 10), get(2, 0, None, 11, 20)];
        assert_not_lin(check_history(&h), 0);
    }

    #[test]
    fn completion_before_invoke_is_clamped() {
        let mut bad = get(2, 0, Some(1), 20, 30);
        bad.complete = Some(5);
        let h = [put(1, 0, 1, 0, 10), bad];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn completed_output_without_completion_time_must_take_effect() {
        let mut read = get(2, 0, Some(7), 0, 0);
        read.complete = None;
        assert_not_lin(check_history(&[read.clone()]), 0);
        let h = [read, put(1, 0, 7, 50, 60)];
        assert_eq!(check_history(&h), CheckResult::Linearizable);
    }

    #[test]
    fn multi_key_violation_reports_the_right_key() {
        let h = [
            put(1, 1, 10, 0, 10),
            put(2, 2, 20, 0, 10),
            get(3, 1, Some(10), 20, 30),
            put(4, 2, 21, 20, 30),
            get(5, 2, Some(20), 40, 50),
            get(6, 3, None, 0, 5),
        ];
        let result = check_history(&h);
        assert_not_lin(result.clone(), 2);
        if let CheckResult::NotLinearizable { ops, .. } = result {
            assert_eq!(ops.iter().map(|op| op.id).collect::<Vec<_>>(), vec![2, 4, 5]);
        }
    }

    /// Many fully concurrent puts followed by a read of a value nobody wrote:
    /// refuting it requires exploring every subset of the puts.
    fn hard_history(key: u64, writers: u64) -> Vec<Operation> {
        let mut h: Vec<Operation> = (0..writers).map(|i| put(i, key, i + 1, 0, 100)).collect();
        h.push(get(writers, key, Some(9_999), 200, 210));
        h
    }

    #[test]
    fn tiny_budget_gives_unknown() {
        let h = hard_history(7, 12);
        assert_eq!(check_history_with_budget(&h, 100), CheckResult::Unknown { key: 7 });
        // The default budget is enough to refute it.
        assert_not_lin(check_history(&h), 7);
    }

    #[test]
    fn violation_on_another_key_beats_unknown() {
        let mut h = hard_history(1, 12);
        h.push(get(100, 2, Some(5), 0, 10));
        assert_not_lin(check_history_with_budget(&h, 50), 2);
    }

    // ---------------------------------------------------------------------
    // Randomized tests.
    // ---------------------------------------------------------------------

    /// Tiny deterministic PRNG (splitmix64) so the tests need no crates.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform-ish value in `0..n` (modulo bias is irrelevant here).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    struct GenConfig {
        clients: u64,
        ops_per_client: u64,
        keys: u64,
        /// Values are drawn from `1..=values`; small ranges make reads
        /// ambiguous and the search harder.
        values: u64,
        indeterminate_percent: u64,
    }

    fn random_input(rng: &mut SplitMix64, values: u64) -> OpInput {
        match rng.below(10) {
            0..=2 => OpInput::Put { value: 1 + rng.below(values) },
            3..=5 => OpInput::Get,
            6 => OpInput::Delete,
            _ => OpInput::Cas {
                expected: if rng.below(3) == 0 { None } else { Some(1 + rng.below(values)) },
                new: 1 + rng.below(values),
            },
        }
    }

    /// Generates a history that is linearizable by construction: each
    /// client issues operations back to back with random durations, every
    /// operation that takes effect gets a linearization point inside its
    /// interval, and outputs are computed by applying the operations to a
    /// sequential store in point order. Indeterminate operations take effect
    /// at a random later point or never, and have no recorded output.
    fn generate_linearizable(seed: u64, cfg: &GenConfig) -> Vec<Operation> {
        let mut rng = SplitMix64(seed);
        let mut ops: Vec<Operation> = Vec::new();
        let mut points: Vec<(u64, usize)> = Vec::new();
        for client in 0..cfg.clients {
            let mut t = rng.below(10);
            for _ in 0..cfg.ops_per_client {
                let invoke = t + rng.below(5);
                let duration = 1 + rng.below(20);
                let complete = invoke + duration;
                let idx = ops.len();
                let indeterminate = rng.below(100) < cfg.indeterminate_percent;
                if indeterminate {
                    if rng.below(2) == 0 {
                        points.push((invoke + rng.below(3 * duration + 1), idx));
                    }
                } else {
                    points.push((invoke + rng.below(duration + 1), idx));
                }
                ops.push(Operation {
                    id: idx as u64,
                    client,
                    key: rng.below(cfg.keys),
                    input: random_input(&mut rng, cfg.values),
                    output: None,
                    invoke,
                    complete: (!indeterminate).then_some(complete),
                });
                // The client moves on once it got a reply or timed out.
                t = complete;
            }
        }
        points.sort_unstable();
        let mut store: HashMap<u64, Option<Value>> = HashMap::new();
        for (_, idx) in points {
            let op = &mut ops[idx];
            let cur = store.entry(op.key).or_insert(None);
            let output = match op.input {
                OpInput::Put { value } => {
                    *cur = Some(value);
                    OpOutput::Put
                }
                OpInput::Delete => {
                    *cur = None;
                    OpOutput::Delete
                }
                OpInput::Get => OpOutput::Get { value: *cur },
                OpInput::Cas { expected, new } => {
                    let ok = *cur == expected;
                    if ok {
                        *cur = Some(new);
                    }
                    OpOutput::Cas { ok }
                }
            };
            if op.complete.is_some() {
                op.output = Some(output);
            }
        }
        ops
    }

    /// Replaces the output of one completed `Get` (picked by `seed`) with a
    /// value that is never written, and returns that operation's key.
    fn corrupt_one_get(ops: &mut [Operation], seed: u64) -> u64 {
        let gets: Vec<usize> =
            (0..ops.len()).filter(|&i| ops[i].input == OpInput::Get && ops[i].output.is_some()).collect();
        assert!(!gets.is_empty(), "history has no completed get");
        let i = gets[(seed % gets.len() as u64) as usize];
        ops[i].output = Some(OpOutput::Get { value: Some(1_000_000) });
        ops[i].key
    }

    #[test]
    fn randomized_linearizable_history_and_corruption() {
        let configs = [
            // Small value domain: reads are ambiguous.
            GenConfig { clients: 5, ops_per_client: 80, keys: 2, values: 5, indeterminate_percent: 3 },
            // Unique-ish values and many timeouts.
            GenConfig { clients: 5, ops_per_client: 80, keys: 2, values: 1_000_000, indeterminate_percent: 10 },
        ];
        for cfg in &configs {
            for seed in 0..3 {
                let mut h = generate_linearizable(seed, cfg);
                assert_eq!(h.len(), 400);
                assert!(h.iter().any(|op| op.output.is_none()), "seed {seed}: no indeterminate ops");
                assert_eq!(check_history(&h), CheckResult::Linearizable, "seed {seed}");
                let key = corrupt_one_get(&mut h, seed);
                assert_not_lin(check_history(&h), key);
            }
        }
    }

    #[test]
    fn three_hundred_ops_on_one_key_with_five_clients() {
        let cfg = GenConfig { clients: 5, ops_per_client: 60, keys: 1, values: 3, indeterminate_percent: 2 };
        let mut h = generate_linearizable(42, &cfg);
        assert_eq!(check_history(&h), CheckResult::Linearizable);
        let key = corrupt_one_get(&mut h, 7);
        assert_not_lin(check_history(&h), key);
    }

    /// Reference checker: plain exhaustive search over orders, with no
    /// event list and no memoization, written independently of `apply`.
    fn brute_force_linearizable(ops: &[Operation]) -> bool {
        fn step(state: Option<Value>, op: &Operation) -> Option<Option<Value>> {
            let (new_state, produced) = match op.input {
                OpInput::Put { value } => (Some(value), OpOutput::Put),
                OpInput::Delete => (None, OpOutput::Delete),
                OpInput::Get => (state, OpOutput::Get { value: state }),
                OpInput::Cas { expected, new } => {
                    if state == expected {
                        (Some(new), OpOutput::Cas { ok: true })
                    } else {
                        (state, OpOutput::Cas { ok: false })
                    }
                }
            };
            match &op.output {
                None => Some(new_state),
                Some(out) if *out == produced => Some(new_state),
                Some(_) => None,
            }
        }

        fn search(ops: &[Operation], placed: &mut [bool], state: Option<Value>) -> bool {
            let all_required_placed = ops.iter().zip(placed.iter()).all(|(op, &p)| p || op.output.is_none());
            if all_required_placed {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // `i` may go next only if no unplaced completed op finished
                // strictly before `i` was invoked.
                let blocked = (0..ops.len()).any(|j| {
                    j != i
                        && !placed[j]
                        && ops[j].output.is_some()
                        && ops[j].complete.is_some_and(|c| c < ops[i].invoke)
                });
                if blocked {
                    continue;
                }
                if let Some(next) = step(state, &ops[i]) {
                    placed[i] = true;
                    if search(ops, placed, next) {
                        return true;
                    }
                    placed[i] = false;
                }
            }
            false
        }

        let mut placed = vec![false; ops.len()];
        search(ops, &mut placed, None)
    }

    /// Small random single-key histories with random (often wrong) outputs.
    fn random_small_history(rng: &mut SplitMix64) -> Vec<Operation> {
        let n = 1 + rng.below(7);
        (0..n)
            .map(|id| {
                let input = random_input(rng, 2);
                let invoke = rng.below(20);
                let output = if rng.below(4) == 0 {
                    None
                } else {
                    Some(match input {
                        OpInput::Put { .. } => OpOutput::Put,
                        OpInput::Delete => OpOutput::Delete,
                        OpInput::Get => OpOutput::Get {
                            value: match rng.below(3) {
                                0 => None,
                                v => Some(v),
                            },
                        },
                        OpInput::Cas { .. } => OpOutput::Cas { ok: rng.below(2) == 0 },
                    })
                };
                let complete = output.as_ref().map(|_| invoke + rng.below(10));
                Operation { id, client: id, key: 0, input, output, invoke, complete }
            })
            .collect()
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = SplitMix64(0xC0FFEE);
        let (mut yes, mut no) = (0, 0);
        for round in 0..5_000 {
            let h = random_small_history(&mut rng);
            let expected = brute_force_linearizable(&h);
            let got = check_history(&h);
            match (&got, expected) {
                (CheckResult::Linearizable, true) => yes += 1,
                (CheckResult::NotLinearizable { key: 0, .. }, false) => no += 1,
                _ => panic!("round {round}: brute force says {expected}, got {got:?}\n{h:#?}"),
            }
        }
        // Make sure both outcomes were actually exercised.
        assert!(yes > 500 && no > 500, "yes={yes} no={no}");
    }
}
