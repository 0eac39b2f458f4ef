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
//! events sorted by time and threaded onto a doubly linked list. A DFS scans
//! the list: at a call event it tries to linearize that operation at the
//! current point (apply it to the register and check its recorded output);
//! on success the call and its return are *lifted* out of the list, the
//! previous state is pushed onto an undo stack, and the scan restarts at the
//! head. Reaching a return event means the operation returning there should
//! already have been linearized, so the search backtracks: it pops the undo
//! stack, *unlifts* that operation (dancing-links style, O(1)) and continues
//! with the next event after it. A cache of `(bitset of linearized operations,
//! register state)` pairs prunes configurations that were already explored,
//! because the future of the search depends only on that pair.
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
//! indeterminate operations get a return event at +infinity and are
//! *optional*: the search succeeds as soon as every completed operation is
//! linearized, so an optional write may be linearized anywhere after its
//! invocation or not at all. (`complete` is ignored for indeterminate
//! operations.) An operation with a recorded output but no completion time is
//! accepted too: it must take effect, but its response time is unknown, so
//! its return is also placed at +infinity.
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
//! budget per key (one step is one visit of an event by the scan); when it is
//! exceeded the result is [`CheckResult::Unknown`]. The cache stores at most
//! one entry per step, so memory is bounded by the budget as well (roughly
//! `budget * (ops_per_key / 8 + 40)` bytes in the worst case). Many
//! indeterminate writes on one key are the usual cause of blow-ups, because
//! each stays concurrent with everything invoked after it.

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
    /// Compare-and-set: if the current value equals `expected` (`None` = the
    /// key must be absent), store `new`; otherwise change nothing.
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
/// optional list holds only the call events of indeterminate ops: their
/// returns are at +infinity, so they never block anything. Keeping them
/// apart lets the search try completed ops before optional ones at every
/// configuration, which makes memo subsumption (see [`Memo`]) effective:
/// configurations with fewer optional ops get visited first and then prune
/// the ones with more.
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

fn assign_bit(bits: &mut [u64], i: usize, value: bool) {
    if value {
        set_bit(bits, i);
    } else {
        clear_bit(bits, i);
    }
}

/// Whether bitset `a` is a subset of bitset `b` (same length).
fn is_subset(a: &[u64], b: &[u64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x & !y == 0)
}

/// Whether the op overwrites the register without looking at it.
fn is_blind_write(input: &OpInput) -> bool {
    matches!(input, OpInput::Put { .. } | OpInput::Delete)
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

/// How many antichain comparisons in [`Memo::visit`] cost one search step.
/// A comparison is a few word operations, much cheaper than a step (which
/// hashes a key), but it must be charged for the budget to bound time.
const COMPARISONS_PER_STEP: u64 = 16;

/// Memo of explored search configurations, with subsumption.
///
/// A configuration is (set `R` of linearized completed ops, set `O` of
/// linearized optional ops plus the "last op was an optional blind write"
/// flag, register state). Porcupine caches exact `(R ∪ O, state)` pairs.
/// We additionally use that `(R, O', s)` with `O' ⊆ O` can do everything
/// `(R, O, s)` can: which events are enabled depends only on `R` (optional
/// ops return at infinity, so they never block anything), `O'` leaves more
/// optional ops available, a clear flag allows more moves than a set one,
/// and success depends only on `R`. So a configuration is pruned when some
/// visited configuration has the same `R` and state and a subset of its
/// `O`. Without this, every pending indeterminate write would double the
/// space a refutation has to exhaust.
///
/// For each `(R, state)` the memo keeps the antichain of minimal `O`s seen,
/// stored flat with `opt_words` words per set.
struct Memo {
    opt_words: usize,
    map: HashMap<Box<[u64]>, Vec<u64>, BuildHasherDefault<FastHasher>>,
    key_buf: Vec<u64>,
}

/// Result of [`Memo::visit`].
struct Visit {
    /// False if the configuration is subsumed by one already visited.
    is_new: bool,
    /// How many stored optional sets were compared, for step accounting.
    comparisons: u64,
}

impl Memo {
    fn new(req_words: usize, opt_words: usize) -> Self {
        Memo { opt_words, map: HashMap::default(), key_buf: Vec::with_capacity(req_words + 2) }
    }

    /// Records the configuration unless it is subsumed by a visited one.
    fn visit(&mut self, required: &[u64], optional: &[u64], state: Option<Value>) -> Visit {
        // The key is the required bitset followed by two words encoding the
        // optional state, flat so that lookups can borrow it.
        self.key_buf.clear();
        self.key_buf.extend_from_slice(required);
        match state {
            Some(v) => self.key_buf.extend_from_slice(&[1, v]),
            None => self.key_buf.extend_from_slice(&[0, 0]),
        }

        let Some(sets) = self.map.get_mut(self.key_buf.as_slice()) else {
            self.map.insert(self.key_buf.as_slice().into(), optional.to_vec());
            return Visit { is_new: true, comparisons: 0 };
        };
        let w = self.opt_words;
        let mut comparisons = 0;
        for set in sets.chunks_exact(w) {
            comparisons += 1;
            if is_subset(set, optional) {
                return Visit { is_new: false, comparisons };
            }
        }
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
        Visit { is_new: true, comparisons }
    }
}

/// Where the DFS scan currently is.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// Scanning the main list for completed ops to linearize next.
    Main(usize),
    /// Scanning the optional list; only calls ranked before `barrier` (the
    /// first pending return of a completed op) may be linearized now.
    Optional { node: usize, barrier: usize },
}

/// One undo record: the lifted call node and what to restore.
struct Frame {
    call: usize,
    prev_state: Option<Value>,
    prev_flag: bool,
    /// The barrier the optional scan was using, to resume it after undoing
    /// an optional op; `None` for completed ops (resume the main scan).
    barrier: Option<usize>,
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
    lists: EventLists,
    required_bits: Vec<u64>,
    /// Linearized optional ops, plus the flag bit at index `flag`.
    optional_bits: Vec<u64>,
    flag: usize,
    memo: Memo,
    state: Option<Value>,
    stack: Vec<Frame>,
    required_left: usize,
    steps: u64,
}

impl Search<'_> {
    /// Tries to linearize the op whose call event is `node` right now.
    fn attempt(&mut self, node: usize, barrier: Option<usize>) -> Attempt {
        let i = self.lists.nodes[node].op;
        let op = self.ops[i];
        let required = op.output.is_some();
        let blind = is_blind_write(&op.input);
        let prev_flag = get_bit(&self.optional_bits, self.flag);
        // Partial-order reduction: the value left by an optional blind write
        // (Put/Delete) only matters to an op that reads the register. If the
        // next op is itself a blind write, dropping the optional one leaves
        // every read unchanged and uses a subset of the optional ops, so
        // some canonical linearization never has an optional blind write
        // directly followed by a blind write, and only those are searched.
        // Symmetry reduction: pending optional ops with identical inputs are
        // interchangeable once invoked, so they are used in invocation
        // order (any linearization can be relabelled that way, as the k-th
        // use of an input is after at least k of their invocations).
        if let Some(twin) = self.prev_twin[i] {
            if !get_bit(&self.optional_bits, self.slot[twin]) {
                CNT.with(|c| {
                    let mut v = c.get();
                    v[0] += 1;
                    c.set(v)
                }); // INSTR
                return Attempt::Rejected;
            }
        }
        if blind && prev_flag {
            CNT.with(|c| {
                let mut v = c.get();
                v[0] += 1;
                c.set(v)
            }); // INSTR
            return Attempt::Rejected;
        }
        let Some(new_state) = apply(self.state, &op.input, op.output.as_ref()) else {
            CNT.with(|c| {
                let mut v = c.get();
                v[if required { 1 } else { 2 }] += 1;
                c.set(v)
            }); // INSTR
            return Attempt::Rejected;
        };

        assign_bit(&mut self.optional_bits, self.flag, !required && blind);
        let bits = if required { &mut self.required_bits } else { &mut self.optional_bits };
        set_bit(bits, self.slot[i]);
        let visit = self.memo.visit(&self.required_bits, &self.optional_bits, new_state);
        self.steps = self.steps.saturating_add(visit.comparisons / COMPARISONS_PER_STEP);
        CNT.with(|c| {
            let mut v = c.get();
            v[if visit.is_new { 3 } else { 4 }] += 1;
            if !required {
                v[5] += 1
            };
            c.set(v)
        }); // INSTR
        if !visit.is_new {
            let bits = if required { &mut self.required_bits } else { &mut self.optional_bits };
            clear_bit(bits, self.slot[i]);
            assign_bit(&mut self.optional_bits, self.flag, prev_flag);
            return Attempt::Rejected;
        }

        self.stack.push(Frame { call: node, prev_state: self.state, prev_flag, barrier });
        self.state = new_state;
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
        self.lists.unlift(frame.call);
        let i = self.lists.nodes[frame.call].op;
        if self.ops[i].output.is_some() {
            clear_bit(&mut self.required_bits, self.slot[i]);
            self.required_left += 1;
        } else {
            clear_bit(&mut self.optional_bits, self.slot[i]);
        }
        assign_bit(&mut self.optional_bits, self.flag, frame.prev_flag);
        self.state = frame.prev_state;
        let node = self.lists.next(frame.call);
        Some(match frame.barrier {
            None => Cursor::Main(node),
            Some(barrier) => Cursor::Optional { node, barrier },
        })
    }

    /// Runs the DFS to completion or until the budget is spent.
    fn run(&mut self, max_steps: u64) -> KeyOutcome {
        let mut cursor = Cursor::Main(self.lists.next(MAIN_HEAD));
        loop {
            self.steps += 1;
            if self.steps > max_steps {
                return KeyOutcome::BudgetExceeded;
            }
            match cursor {
                Cursor::Main(n) if n != NIL && self.lists.nodes[n].is_call => {
                    cursor = match self.attempt(n, None) {
                        Attempt::AllLinearized => return KeyOutcome::Linearizable,
                        Attempt::Lifted => Cursor::Main(self.lists.next(MAIN_HEAD)),
                        Attempt::Rejected => Cursor::Main(self.lists.next(n)),
                    };
                }
                Cursor::Main(n) => {
                    // The first pending return: every completed op that may
                    // go next has been tried, so try the optional ops invoked
                    // before it. Falling off the end cannot happen while a
                    // completed op is pending, but is handled as "no bound".
                    let barrier = if n == NIL { usize::MAX } else { self.lists.nodes[n].pos };
                    cursor = Cursor::Optional { node: self.lists.next(OPT_HEAD), barrier };
                }
                Cursor::Optional { node, barrier } if node != NIL && self.lists.nodes[node].pos < barrier => {
                    cursor = match self.attempt(node, Some(barrier)) {
                        // An optional op is never the last completed one.
                        Attempt::AllLinearized => return KeyOutcome::Linearizable,
                        Attempt::Lifted => Cursor::Main(self.lists.next(MAIN_HEAD)),
                        Attempt::Rejected => Cursor::Optional { node: self.lists.next(node), barrier },
                    };
                }
                Cursor::Optional { .. } => {
                    // Nothing can be linearized here, yet a completed op must
                    // be before its return: undo the latest choice.
                    match self.backtrack() {
                        Some(next) => cursor = next,
                        None => return KeyOutcome::NotLinearizable,
                    }
                }
            }
        }
    }
}

thread_local! { static CNT: std::cell::Cell<[u64;6]> = const { std::cell::Cell::new([0;6]) }; } // INSTR
/// Searches for a linearization of one key's operations.
fn check_key(key_ops: &[&Operation], max_steps: u64) -> KeyOutcome {
    // Indeterminate reads have no effect on the register and accept any
    // output, so they can never help or hurt a linearization.
    let ops: Vec<&Operation> =
        key_ops.iter().copied().filter(|op| !(op.output.is_none() && op.input == OpInput::Get)).collect();

    // Completed ("required") and indeterminate ("optional") ops get separate
    // dense indices into separate bitsets; see `Memo` for why.
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

    // Link each optional op to the previous one with an identical input,
    // in event order (the order the optional list uses).
    let mut prev_twin = vec![None; ops.len()];
    let mut last_with_input: HashMap<(u8, Option<Value>, Value), usize> = HashMap::new();
    for &(_, is_return, op) in &events {
        if !is_return && ops[op].output.is_none() {
            let input_key = match ops[op].input {
                OpInput::Put { value } => (0, None, value),
                OpInput::Delete => (1, None, 0),
                OpInput::Get => (2, None, 0),
                OpInput::Cas { expected, new } => (3, expected, new),
            };
            prev_twin[op] = last_with_input.insert(input_key, op);
        }
    }

    // The optional bitset has one extra bit, the flag, set while the most
    // recently linearized op is an optional blind write. Keeping it in the
    // optional set lets subsumption treat "flag clear" as the dominating,
    // less constrained configuration.
    let required_bits = vec![0u64; required_total.div_ceil(64)];
    let optional_bits = vec![0u64; (optional_total + 1).div_ceil(64)];
    let memo = Memo::new(required_bits.len(), optional_bits.len());
    let mut search = Search {
        stack: Vec::with_capacity(ops.len()),
        ops,
        slot,
        prev_twin,
        lists: EventLists { nodes },
        required_bits,
        optional_bits,
        flag: optional_total,
        memo,
        state: None,
        required_left: required_total,
        steps: 0,
    };
    let outcome = search.run(max_steps);
    eprintln!(
        "CNT blindskip={} reqfail={} optfail={} new={} memohit={} optattempt={}",
        CNT.with(|c| c.get()[0]),
        CNT.with(|c| c.get()[1]),
        CNT.with(|c| c.get()[2]),
        CNT.with(|c| c.get()[3]),
        CNT.with(|c| c.get()[4]),
        CNT.with(|c| c.replace([0; 6])[5])
    ); // INSTR
    eprintln!(
        "OUTCOME {:?}: ops={} opt={} steps={} keys={} sets={}",
        outcome,
        search.ops.len(),
        optional_total,
        search.steps,
        search.memo.map.len(),
        search.memo.map.values().map(|v| v.len() / search.memo.opt_words).sum::<usize>()
    ); // INSTR
    outcome
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
        let cfg = GenConfig { clients: 5, ops_per_client: 80, keys: 2, values: 5, indeterminate_percent: 3 };
        for seed in 0..4 {
            let mut h = generate_linearizable(seed, &cfg);
            assert_eq!(h.len(), 400);
            assert!(h.iter().any(|op| op.output.is_none()), "seed {seed}: no indeterminate ops");
            assert_eq!(check_history(&h), CheckResult::Linearizable, "seed {seed}");
            let key = corrupt_one_get(&mut h, seed);
            assert_not_lin(check_history(&h), key);
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
        let n = 1 + rng.below(8);
        (0..n)
            .map(|id| {
                let input = random_input(rng, 2);
                let invoke = rng.below(20);
                let output = if rng.below(3) == 0 {
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
        for round in 0..200_000 {
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
        assert!(yes > 300 && no > 300, "yes={yes} no={no}");
    }

    #[test]
    #[ignore]
    fn perf_probe() {
        for &(clients, per, keys, values, pct) in &[
            (5u64, 60u64, 1u64, 3u64, 2u64),
            (5, 60, 1, 3, 5),
            (5, 60, 1, 5, 10),
            (5, 300, 1, 3, 3),
            (10, 60, 1, 3, 3),
            (5, 200, 3, 20, 5),
            (5, 60, 1, 3, 20),
        ] {
            let cfg = GenConfig { clients, ops_per_client: per, keys, values, indeterminate_percent: pct };
            let mut worst_ok = 0f64;
            let mut worst_bad = 0f64;
            let mut unknown = 0;
            for seed in 0..20 {
                let mut h = generate_linearizable(seed, &cfg);
                let t = std::time::Instant::now();
                let r = check_history(&h);
                worst_ok = worst_ok.max(t.elapsed().as_secs_f64());
                if matches!(r, CheckResult::Unknown { .. }) {
                    unknown += 1;
                } else {
                    assert_eq!(r, CheckResult::Linearizable);
                }
                let key = corrupt_one_get(&mut h, seed);
                let t = std::time::Instant::now();
                let r = check_history(&h);
                worst_bad = worst_bad.max(t.elapsed().as_secs_f64());
                if matches!(r, CheckResult::Unknown { .. }) {
                    unknown += 1;
                } else {
                    assert_not_lin(r, key);
                }
            }
            println!("clients={clients} per={per} keys={keys} values={values} pct={pct}: worst ok {worst_ok:.4}s worst bad {worst_bad:.4}s unknown {unknown}");
        }
    }
}
