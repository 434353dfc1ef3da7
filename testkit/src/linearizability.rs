//! Linearizability checking for key-value histories.
//!
//! A test drives a cluster from several clients, records every operation it issued (with the
//! times it was invoked and answered) and hands the [`Operation`] list to [`check`]. The checker
//! decides whether some total order of the operations both respects real time (an operation that
//! was answered before another was invoked comes first) and explains every answer when the
//! operations are replayed, one at a time, against a plain in-memory map.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<String>`; a key that was never written is
//! absent (`None`). The operations are:
//!
//! * [`Input::Put`] stores a value and answers with the value it replaced.
//! * [`Input::Get`] answers with the current value.
//! * [`Input::Cas`] stores `new` only when the current value equals `expected`; it answers whether
//!   it stored and the value the key holds afterwards.
//!
//! An operation whose answer never arrived (the client timed out, the node it talked to died) is
//! recorded with `output: None` and `completed: None`. It may have taken effect at any instant
//! after its invocation, or not at all, and whatever it would have answered is accepted. An
//! operation known to have taken effect whose answer is unknown (the service confirmed the command
//! was applied but lost its output) is recorded with `output: None` and its completion time: it
//! took effect at some instant between its invocation and its completion, with any answer. (A
//! raftkit `WriteError::OutcomeUnknown` is *not* that: the command may have been replaced, so
//! record it with `completed: None`, as the cluster workload does.) An
//! operation known to have failed without effect must be left out of the history.
//!
//! # Algorithm
//!
//! The history is split by key and every key is checked on its own: a history of independent
//! registers is linearizable exactly when each register's sub-history is. Keys are visited in
//! lexicographic order, so the verdict is deterministic.
//!
//! For one key, the checker performs the depth-first search of Wing and Gong as refined by Lowe:
//! call and return events are kept in a doubly linked list ordered by time; the search repeatedly
//! picks an operation whose call comes before the first remaining return, applies it to the
//! model, and unlinks its two events. When the first remaining event is a return, the operation
//! it belongs to was not placed in time, so the search undoes the most recent choice and tries the
//! next candidate. Pairs of (set of operations placed so far, model state) that were already
//! explored are remembered and never explored twice, which keeps the search fast when
//! operations overlap only a few others.
//!
//! Operations whose outcome is unknown are what makes such searches slow, so they get extra care:
//!
//! * Some are set aside before searching: reads with an unknown answer, and lost writes (no
//!   answer, no completion time) of a value no other operation writes or could have seen.
//! * A lost operation is only placed where it changes the value, and a lost put never directly
//!   after another lost operation. Any linearization can be rearranged to respect both rules by
//!   moving lost operations to its end, so no verdict changes; see `check_key` for the argument.
//!
//! # Example
//!
//! ```
//! use raftkit_testkit::linearizability::{Input, Operation, Output, Verdict, check};
//!
//! let history = vec![
//!     Operation {
//!         client: 1,
//!         key: "x".into(),
//!         input: Input::Put { value: "a".into() },
//!         output: Some(Output::Put { prev: None }),
//!         invoked: 0,
//!         completed: Some(10),
//!     },
//!     // Invoked after the put was acknowledged, yet it misses the write: a stale read.
//!     Operation {
//!         client: 2,
//!         key: "x".into(),
//!         input: Input::Get,
//!         output: Some(Output::Get { value: None }),
//!         invoked: 20,
//!         completed: Some(30),
//!     },
//! ];
//! let verdict = check(&history).unwrap();
//! assert!(matches!(&verdict, Verdict::NotLinearizable { key, .. } if key == "x"));
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Step budget per key used by [`check`].
///
/// One step is one move of the search: trying an operation, or undoing one. A key with a couple of
/// thousand operations from a handful of clients, few of them with unknown outcomes, needs a few
/// hundred thousand at most. Exhausting the budget takes seconds and, for such a key, several
/// hundred megabytes of memo.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 50_000_000;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// Set the key; the store answers with the previous value.
    Put {
        /// The value to store.
        value: String,
    },
    /// Read the key.
    Get,
    /// If the current value equals `expected`, set it to `new`; the store answers whether it
    /// swapped and the value after.
    Cas {
        /// The value the key must hold for the swap to happen (`None`: the key must be absent).
        expected: Option<String>,
        /// The value stored when the swap happens.
        new: String,
    },
}

/// What the store answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// Answer to [`Input::Put`].
    Put {
        /// The value the put replaced (`None`: the key was absent).
        prev: Option<String>,
    },
    /// Answer to [`Input::Get`].
    Get {
        /// The value read (`None`: the key was absent).
        value: Option<String>,
    },
    /// Answer to [`Input::Cas`].
    Cas {
        /// Whether the value matched `expected` and was replaced.
        swapped: bool,
        /// The value after the operation: `new` when it swapped, the unchanged value otherwise.
        current: Option<String>,
    },
}

/// One operation in a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation; only used to explain verdicts.
    pub client: u64,
    /// The key the operation touched.
    pub key: String,
    /// What the client asked.
    pub input: Input,
    /// What the store answered; `None` when the answer is unknown, and then any answer is
    /// acceptable. Whether such an operation took effect is told by `completed`: with
    /// `completed: None` it may or may not have (the client timed out, the node died); with a
    /// completion time it did, by then (the node said so without giving the answer).
    pub output: Option<Output>,
    /// Invocation time (any monotonic unit, e.g. nanoseconds).
    pub invoked: u64,
    /// Completion time. `None` when the outcome is unknown: the operation is treated as completing
    /// infinitely late, so it may take effect at any instant after its invocation, or never. An
    /// operation with a completion time took effect before it, whether or not its answer is known.
    pub completed: Option<u64>,
}

/// The checker's conclusion about a history.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Some order of the operations respects real time and explains every answer.
    Linearizable,
    /// The sub-history of `key` has no linearization. When several keys fail, the first key in
    /// lexicographic order is reported.
    NotLinearizable {
        /// The key whose operations cannot be ordered.
        key: String,
        /// Every operation on `key`, as indices into the checked slice, sorted by invocation time
        /// (ties by index).
        ops: Vec<usize>,
        /// The longest sequence of those operations (indices into the checked slice, in the order
        /// they were placed) that the search managed to linearize before running out of options.
        /// Operations the checker set aside as irrelevant (see the module documentation) never
        /// appear here.
        longest_prefix: Vec<usize>,
        /// The operations `ops` refers to, in the same order, so the verdict can explain itself
        /// without the history at hand.
        operations: Vec<Operation>,
    },
    /// The search for `key` exceeded the step budget before deciding. Keys that did fail are
    /// reported as [`Verdict::NotLinearizable`] in preference to this.
    Unknown {
        /// The first key (in lexicographic order) that could not be decided.
        key: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// A history that cannot be checked because it is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// The operation at `index` completed before it was invoked.
    CompletedBeforeInvoked {
        /// Index of the operation in the checked slice.
        index: usize,
        /// Its invocation time.
        invoked: u64,
        /// Its completion time, earlier than `invoked`.
        completed: u64,
    },
    /// The operation at `index` has an output of a different kind than its input (for example a
    /// [`Output::Get`] answering an [`Input::Put`]).
    MismatchedOutput {
        /// Index of the operation in the checked slice.
        index: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::CompletedBeforeInvoked { index, invoked, completed } => write!(
                f,
                "operation #{index} completed at {completed}, before it was invoked at {invoked}"
            ),
            HistoryError::MismatchedOutput { index } => {
                write!(f, "operation #{index} has an output that does not match its input kind")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// Checks `history` with the [`DEFAULT_MAX_STEPS_PER_KEY`] budget.
///
/// # Errors
///
/// Returns a [`HistoryError`] when the history is malformed; see [`check_with_budget`].
pub fn check(history: &[Operation]) -> Result<Verdict, HistoryError> {
    check_with_budget(history, DEFAULT_MAX_STEPS_PER_KEY)
}

/// Checks whether `history` is linearizable, spending at most `max_steps_per_key` search steps on
/// each key.
///
/// Every key is checked. A key without a linearization yields [`Verdict::NotLinearizable`] (the
/// first such key in lexicographic order); otherwise a key whose budget ran out yields
/// [`Verdict::Unknown`]; otherwise the history is [`Verdict::Linearizable`]. The verdict does not
/// depend on the order of `history`, except for the indices it reports.
///
/// # Errors
///
/// [`HistoryError::CompletedBeforeInvoked`] when an operation completed before its invocation,
/// [`HistoryError::MismatchedOutput`] when an output's kind differs from its input's. The first
/// malformed operation (by index) is reported, and nothing is checked.
pub fn check_with_budget(
    history: &[Operation],
    max_steps_per_key: u64,
) -> Result<Verdict, HistoryError> {
    validate(history)?;

    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(index);
    }

    let mut undecided: Option<&str> = None;
    for (key, mut indices) in by_key {
        indices.sort_by_key(|&index| (history[index].invoked, index));
        match check_key(history, &indices, max_steps_per_key) {
            KeyOutcome::Linearizable => {}
            KeyOutcome::OutOfBudget => {
                undecided.get_or_insert(key);
            }
            KeyOutcome::Violation { longest_prefix } => {
                let operations = indices.iter().map(|&index| history[index].clone()).collect();
                return Ok(Verdict::NotLinearizable {
                    key: key.to_owned(),
                    ops: indices,
                    longest_prefix,
                    operations,
                });
            }
        }
    }
    Ok(match undecided {
        Some(key) => Verdict::Unknown { key: key.to_owned() },
        None => Verdict::Linearizable,
    })
}

fn validate(history: &[Operation]) -> Result<(), HistoryError> {
    for (index, op) in history.iter().enumerate() {
        if let Some(completed) = op.completed {
            if completed < op.invoked {
                return Err(HistoryError::CompletedBeforeInvoked {
                    index,
                    invoked: op.invoked,
                    completed,
                });
            }
        }
        let matches = match (&op.input, &op.output) {
            (_, None)
            | (Input::Put { .. }, Some(Output::Put { .. }))
            | (Input::Get, Some(Output::Get { .. }))
            | (Input::Cas { .. }, Some(Output::Cas { .. })) => true,
            (_, Some(_)) => false,
        };
        if !matches {
            return Err(HistoryError::MismatchedOutput { index });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Per-key search
// ---------------------------------------------------------------------------------------------

/// An interned value: every distinct string of one key's sub-history gets a small number.
type ValueId = u32;

/// A register state with interned values.
type State = Option<ValueId>;

/// [`Input`] with interned values.
#[derive(Clone, Copy, Debug)]
enum CompactInput {
    Put(ValueId),
    Get,
    Cas { expected: State, new: ValueId },
}

/// [`Output`] with interned values.
#[derive(Clone, Copy, Debug)]
enum CompactOutput {
    Put(State),
    Get(State),
    Cas { swapped: bool, current: State },
}

#[derive(Clone, Copy, Debug)]
struct CompactOp {
    input: CompactInput,
    output: Option<CompactOutput>,
    /// Neither an answer nor a completion time: the operation may take effect at any instant
    /// after its invocation, or never.
    lost: bool,
}

impl CompactOp {
    /// Applies the operation to `state`: the state after it, or `None` when the recorded output
    /// contradicts the model.
    fn step(&self, state: State) -> Option<State> {
        let (next, answer) = match self.input {
            CompactInput::Put(value) => (Some(value), CompactOutput::Put(state)),
            CompactInput::Get => (state, CompactOutput::Get(state)),
            CompactInput::Cas { expected, new } => {
                if state == expected {
                    (Some(new), CompactOutput::Cas { swapped: true, current: Some(new) })
                } else {
                    (state, CompactOutput::Cas { swapped: false, current: state })
                }
            }
        };
        let accepted = match (self.output, answer) {
            (None, _) => true,
            (Some(CompactOutput::Put(a)), CompactOutput::Put(b))
            | (Some(CompactOutput::Get(a)), CompactOutput::Get(b)) => a == b,
            (
                Some(CompactOutput::Cas { swapped: a_swapped, current: a_current }),
                CompactOutput::Cas { swapped: b_swapped, current: b_current },
            ) => a_swapped == b_swapped && a_current == b_current,
            // Kinds are validated up front; a mismatch can only mean "does not explain".
            (Some(_), _) => false,
        };
        accepted.then_some(next)
    }
}

/// Maps each distinct string of one key's sub-history to a [`ValueId`], and counts for each how
/// many operations write it or may have seen it as the current value (see [`is_irrelevant`]).
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, ValueId>,
    mentions: Vec<u32>,
}

impl<'a> Interner<'a> {
    fn value(&mut self, value: &'a str, mentioned: bool) -> ValueId {
        let next = ValueId::try_from(self.mentions.len()).expect("more than 2^32 distinct values");
        let id = *self.ids.entry(value).or_insert(next);
        if id == next {
            self.mentions.push(0);
        }
        self.mentions[id as usize] += u32::from(mentioned);
        id
    }

    fn state(&mut self, value: &'a Option<String>, mentioned: bool) -> State {
        value.as_deref().map(|value| self.value(value, mentioned))
    }

    fn op(&mut self, op: &'a Operation) -> CompactOp {
        let input = match &op.input {
            Input::Put { value } => CompactInput::Put(self.value(value, true)),
            Input::Get => CompactInput::Get,
            Input::Cas { expected, new } => {
                // A compare-and-swap known to have failed saw some other value as current.
                let failed = matches!(op.output, Some(Output::Cas { swapped: false, .. }));
                CompactInput::Cas {
                    expected: self.state(expected, !failed),
                    new: self.value(new, true),
                }
            }
        };
        let output = op.output.as_ref().map(|output| match output {
            Output::Put { prev } => CompactOutput::Put(self.state(prev, true)),
            Output::Get { value } => CompactOutput::Get(self.state(value, true)),
            Output::Cas { swapped, current } => {
                CompactOutput::Cas { swapped: *swapped, current: self.state(current, true) }
            }
        });
        CompactOp { input, output, lost: op.output.is_none() && op.completed.is_none() }
    }
}

enum KeyOutcome {
    Linearizable,
    /// Indices into the history, in linearization order.
    Violation {
        longest_prefix: Vec<usize>,
    },
    OutOfBudget,
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;

/// One node of the event list: the call or the return of an operation.
#[derive(Clone, Copy, Debug)]
struct Node {
    prev: usize,
    next: usize,
    /// The operation (index into the key's compact operations).
    op: usize,
    /// For a call node, its return node; for a return node (and the head), [`NIL`].
    ret: usize,
}

impl Node {
    fn is_call(&self) -> bool {
        self.ret != NIL
    }
}

/// Index-based doubly linked list of call and return events with a sentinel head at [`HEAD`].
struct EventList {
    nodes: Vec<Node>,
}

impl EventList {
    /// Builds the list for `ops` (invocation time, completion time) in event order: by time,
    /// calls before returns at equal times, returns of operations without a completion last.
    fn new(times: &[(u64, Option<u64>)]) -> Self {
        // Sort key: (at infinity, time, is return, operation).
        let mut events: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(times.len() * 2);
        for (op, &(invoked, completed)) in times.iter().enumerate() {
            events.push((false, invoked, false, op));
            events.push((completed.is_none(), completed.unwrap_or(0), true, op));
        }
        events.sort_unstable();

        // Node `position + 1` holds event `position`; node 0 is the head.
        let mut return_node = vec![NIL; times.len()];
        for (position, &(_, _, is_return, op)) in events.iter().enumerate() {
            if is_return {
                return_node[op] = position + 1;
            }
        }
        let head =
            Node { prev: NIL, next: if events.is_empty() { NIL } else { 1 }, op: NIL, ret: NIL };
        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(head);
        for (position, &(_, _, is_return, op)) in events.iter().enumerate() {
            let node = position + 1;
            nodes.push(Node {
                prev: node - 1,
                next: if node < events.len() { node + 1 } else { NIL },
                op,
                ret: if is_return { NIL } else { return_node[op] },
            });
        }
        EventList { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[HEAD].next
    }

    fn unlink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, node: usize) {
        let Node { prev, next, .. } = self.nodes[node];
        self.nodes[prev].next = node;
        if next != NIL {
            self.nodes[next].prev = node;
        }
    }

    /// Removes a call node and its return node.
    fn lift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`EventList::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        let ret = self.nodes[call].ret;
        self.relink(ret);
        self.relink(call);
    }
}

/// Whether an operation may be left out of the search without changing the verdict.
///
/// * A read with an unknown answer has no effect and accepts any answer, so it fits anywhere.
/// * A write with an unknown answer and no completion time may be placed after everything else.
///   Suppose no other operation writes its value, no answer contains it, and no compare-and-swap
///   expects it unless that compare-and-swap is known to have failed. Then every operation that
///   runs while the value is current has an unknown answer (one with a known answer would reveal
///   the value), and the first to replace it is a put with an unknown answer, since a
///   compare-and-swap would have to expect the value. So moving the write to the end of a
///   linearization only changes what operations that accept any answer see, up to a put that
///   overwrites the key regardless, and the linearization stays valid.
fn is_irrelevant(op: &CompactOp, mentions: &[u32]) -> bool {
    if op.output.is_some() {
        return false;
    }
    match op.input {
        CompactInput::Get => true,
        CompactInput::Put(value) | CompactInput::Cas { new: value, .. } => {
            op.lost && mentions[value as usize] == 1
        }
    }
}

/// A fast deterministic hasher for the memo's word slices.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        // Multiply by an odd constant (2^64 / golden ratio) and rotate, so every word spreads
        // over the whole state before the next one is mixed in.
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(23);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        // Final avalanche (from splitmix64) so that low and high bits both depend on every word.
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

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

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
}

/// Memo of explored configurations. Each entry is the bitset of placed operations followed by one
/// word encoding the model state (`0` for absent, `id + 1` otherwise).
type Memo = HashSet<Box<[u64]>, BuildHasherDefault<WordHasher>>;

fn encode_state(state: State) -> u64 {
    state.map_or(0, |id| u64::from(id) + 1)
}

/// One placed operation on the search stack, with what is needed to undo it.
struct Frame {
    /// The operation's call node.
    call: usize,
    /// The state before it.
    state: State,
    /// `after_lost_write` before it.
    after_lost_write: bool,
}

/// Checks the sub-history `indices` (one key, sorted by invocation) of `history`.
///
/// Besides the plain search, lost operations (no answer, no completion time) are only placed
/// where they can matter, so that many of them pending at once do not multiply the configurations:
///
/// * A lost operation that leaves the state unchanged where it is placed (a compare-and-swap that
///   does not match, a put of the current value) is never placed: moving it to the very end of a
///   linearization keeps the linearization valid, since nothing before it changes and any outcome
///   of it is accepted.
/// * A lost put never immediately follows a lost operation that changed the state: the earlier
///   one's value is overwritten before anything observes it, so it too can move to the end.
///
/// Repeating these moves turns any linearization into one whose lost operations outside the
/// trailing run of lost operations obey both rules, so the search loses nothing. Whether the
/// latest placed operation is a lost write is part of the memo key, since it restricts what may
/// follow.
fn check_key(history: &[Operation], indices: &[usize], max_steps: u64) -> KeyOutcome {
    let mut interner = Interner::default();
    let compact: Vec<CompactOp> =
        indices.iter().map(|&index| interner.op(&history[index])).collect();

    let mut ops: Vec<CompactOp> = Vec::with_capacity(indices.len());
    let mut global: Vec<usize> = Vec::with_capacity(indices.len());
    let mut times: Vec<(u64, Option<u64>)> = Vec::with_capacity(indices.len());
    for (&index, op) in indices.iter().zip(&compact) {
        let original = &history[index];
        if !is_irrelevant(op, &interner.mentions) {
            ops.push(*op);
            global.push(index);
            times.push((original.invoked, original.completed));
        }
    }

    let mut list = EventList::new(&times);
    let words = ops.len().div_ceil(64);
    // `key[..words]` is the bitset of placed operations; `key[words]` encodes the configuration's
    // state and `after_lost_write`, and is filled in per probe.
    let mut key = vec![0u64; words + 1];
    let mut memo = Memo::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut state: State = None;
    let mut after_lost_write = false;
    let mut unplaced_answered = ops.iter().filter(|op| !op.lost).count();
    let mut entry = list.first();
    let mut steps: u64 = 0;

    // Once only lost operations remain they can be appended in any order: nothing follows them
    // in real time and any outcome of theirs is accepted.
    while unplaced_answered > 0 {
        steps += 1;
        if steps > max_steps {
            return KeyOutcome::OutOfBudget;
        }
        let node = list.nodes[entry];
        if node.is_call() {
            let op = ops[node.op];
            let next = op.step(state).filter(|&next| {
                !op.lost
                    || (next != state
                        && !(after_lost_write && matches!(op.input, CompactInput::Put(_))))
            });
            if let Some(next_state) = next {
                let (word, bit) = (node.op / 64, 1u64 << (node.op % 64));
                key[word] |= bit;
                key[words] = encode_state(next_state) << 1 | u64::from(op.lost);
                if !memo.contains(key.as_slice()) {
                    memo.insert(key.clone().into_boxed_slice());
                    stack.push(Frame { call: entry, state, after_lost_write });
                    if stack.len() > longest.len() {
                        longest.clear();
                        longest.extend(stack.iter().map(|frame| global[list.nodes[frame.call].op]));
                    }
                    state = next_state;
                    after_lost_write = op.lost;
                    unplaced_answered -= usize::from(!op.lost);
                    list.lift(entry);
                    entry = list.first();
                    continue;
                }
                key[word] &= !bit;
            }
            entry = node.next;
        } else {
            // Every candidate before the first remaining return has been tried, and that return's
            // operation cannot be placed later: undo the latest choice and try the next candidate
            // after it.
            let Some(frame) = stack.pop() else {
                return KeyOutcome::Violation { longest_prefix: longest };
            };
            let op = list.nodes[frame.call].op;
            key[op / 64] &= !(1u64 << (op % 64));
            state = frame.state;
            after_lost_write = frame.after_lost_write;
            unplaced_answered += usize::from(!ops[op].lost);
            list.unlift(frame.call);
            entry = list.nodes[frame.call].next;
        }
    }
    KeyOutcome::Linearizable
}

// ---------------------------------------------------------------------------------------------
// Explanations
// ---------------------------------------------------------------------------------------------

/// Formats a register value: quoted, or `absent`.
struct ShowValue<'a>(&'a Option<String>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value:?}"),
            None => f.write_str("absent"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Put { value } => write!(f, "put {value:?}"),
            Input::Get => f.write_str("get"),
            Input::Cas { expected, new } => {
                write!(f, "cas if {} then {new:?}", ShowValue(expected))
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Put { prev } => write!(f, "prev {}", ShowValue(prev)),
            Output::Get { value } => write!(f, "value {}", ShowValue(value)),
            Output::Cas { swapped: true, current } => {
                write!(f, "swapped, now {}", ShowValue(current))
            }
            Output::Cas { swapped: false, current } => {
                write!(f, "not swapped, current {}", ShowValue(current))
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [{}, ", self.client, self.invoked)?;
        match self.completed {
            Some(completed) => write!(f, "{completed}]")?,
            None => f.write_str("never completed]")?,
        }
        write!(f, " key {:?}: {} -> ", self.key, self.input)?;
        match &self.output {
            Some(output) => write!(f, "{output}"),
            None => f.write_str("unknown outcome"),
        }
    }
}

/// The register value after applying `input` to `state`, ignoring recorded outputs.
fn apply(state: Option<String>, input: &Input) -> Option<String> {
    match input {
        Input::Put { value } => Some(value.clone()),
        Input::Get => state,
        Input::Cas { expected, new } => {
            if state == *expected {
                Some(new.clone())
            } else {
                state
            }
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("the history is linearizable"),
            Verdict::Unknown { key } => write!(
                f,
                "undecided: the search for key {key:?} exceeded its step budget before finding a \
                 linearization or ruling one out"
            ),
            Verdict::NotLinearizable { key, ops, longest_prefix, operations } => {
                writeln!(
                    f,
                    "the history is not linearizable: no order of the {} operations on key \
                     {key:?} respects real time and explains every answer",
                    ops.len()
                )?;
                writeln!(f, "operations on key {key:?}, by invocation time:")?;
                for (index, op) in ops.iter().zip(operations) {
                    writeln!(f, "  #{index:<5} {op}")?;
                }
                let by_index: HashMap<usize, &Operation> =
                    ops.iter().copied().zip(operations).collect();
                writeln!(
                    f,
                    "longest linearizable prefix ({} of {} operations), in order:",
                    longest_prefix.len(),
                    ops.len()
                )?;
                let mut state = None;
                for index in longest_prefix {
                    match by_index.get(index) {
                        Some(op) => {
                            state = apply(state, &op.input);
                            writeln!(
                                f,
                                "  #{index:<5} {} -> state {}",
                                op.input,
                                ShowValue(&state)
                            )?;
                        }
                        None => writeln!(f, "  #{index}")?,
                    }
                }
                let placed: HashSet<usize> = longest_prefix.iter().copied().collect();
                let rest: Vec<String> = ops
                    .iter()
                    .filter(|index| !placed.contains(index))
                    .map(|index| format!("#{index}"))
                    .collect();
                write!(
                    f,
                    "after that prefix the key is {}; operations outside it: {}",
                    ShowValue(&state),
                    rest.join(", ")
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(value: &str) -> Option<String> {
        Some(value.to_owned())
    }

    fn op(
        client: u64,
        key: &str,
        input: Input,
        output: Option<Output>,
        invoked: u64,
        completed: Option<u64>,
    ) -> Operation {
        Operation { client, key: key.to_owned(), input, output, invoked, completed }
    }

    /// A completed put of `value` on `key` that replaced `prev`.
    fn put(
        client: u64,
        key: &str,
        times: (u64, u64),
        value: &str,
        prev: Option<&str>,
    ) -> Operation {
        op(
            client,
            key,
            Input::Put { value: value.to_owned() },
            Some(Output::Put { prev: prev.map(str::to_owned) }),
            times.0,
            Some(times.1),
        )
    }

    /// A completed get on `key` that read `value`.
    fn get(client: u64, key: &str, times: (u64, u64), value: Option<&str>) -> Operation {
        op(
            client,
            key,
            Input::Get,
            Some(Output::Get { value: value.map(str::to_owned) }),
            times.0,
            Some(times.1),
        )
    }

    /// A completed compare-and-swap on `key`.
    fn cas(
        client: u64,
        key: &str,
        times: (u64, u64),
        (expected, new): (Option<&str>, &str),
        (swapped, current): (bool, Option<&str>),
    ) -> Operation {
        op(
            client,
            key,
            Input::Cas { expected: expected.map(str::to_owned), new: new.to_owned() },
            Some(Output::Cas { swapped, current: current.map(str::to_owned) }),
            times.0,
            Some(times.1),
        )
    }

    /// A put of `value` whose outcome never arrived.
    fn unknown_put(client: u64, key: &str, invoked: u64, value: &str) -> Operation {
        op(client, key, Input::Put { value: value.to_owned() }, None, invoked, None)
    }

    fn verdict(history: &[Operation]) -> Verdict {
        check(history).expect("well-formed history")
    }

    fn assert_linearizable(history: &[Operation]) {
        let verdict = verdict(history);
        assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
    }

    /// Asserts that `history` is not linearizable because of `key`, and returns the verdict.
    fn assert_violation(history: &[Operation], key: &str) -> Verdict {
        let verdict = verdict(history);
        match &verdict {
            Verdict::NotLinearizable { key: failing, ops, longest_prefix, operations } => {
                assert_eq!(failing, key, "{verdict}");
                assert_eq!(ops.len(), operations.len());
                for (&index, operation) in ops.iter().zip(operations) {
                    assert_eq!(&history[index], operation);
                    assert_eq!(operation.key, key);
                }
                assert!(ops.windows(2).all(|w| history[w[0]].invoked <= history[w[1]].invoked));
                assert!(longest_prefix.len() < ops.len(), "{verdict}");
                assert!(longest_prefix.iter().all(|index| ops.contains(index)));
            }
            other => panic!("expected a violation on {key:?}, got {other:?}"),
        }
        verdict
    }

    // ---- basic shapes ------------------------------------------------------------------------

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = vec![
            get(1, "x", (0, 1), None),
            put(1, "x", (2, 3), "a", None),
            get(2, "x", (4, 5), Some("a")),
            put(2, "x", (6, 7), "b", Some("a")),
            cas(1, "x", (8, 9), (Some("b"), "c"), (true, Some("c"))),
            cas(1, "x", (10, 11), (Some("b"), "d"), (false, Some("c"))),
            get(3, "x", (12, 13), Some("c")),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn sequential_history_with_a_wrong_answer_is_not_linearizable() {
        let history = vec![
            put(1, "x", (0, 1), "a", None),
            put(2, "x", (2, 3), "b", Some("a")),
            // Claims to have replaced "a", which was already replaced.
            put(1, "x", (4, 5), "c", Some("a")),
        ];
        let verdict = assert_violation(&history, "x");
        let Verdict::NotLinearizable { longest_prefix, .. } = &verdict else { unreachable!() };
        assert_eq!(longest_prefix, &[0, 1]);
    }

    #[test]
    fn concurrent_get_may_see_either_value() {
        for seen in [None, Some("a")] {
            let history = vec![put(1, "x", (0, 10), "a", None), get(2, "x", (5, 15), seen)];
            assert_linearizable(&history);
        }
        // Two overlapping writes and a read that overlaps both: any of the three values.
        for seen in [None, Some("a"), Some("b")] {
            let history = vec![
                op(1, "x", Input::Put { value: "a".into() }, None, 0, Some(10)),
                op(2, "x", Input::Put { value: "b".into() }, None, 0, Some(10)),
                get(3, "x", (5, 15), seen),
            ];
            assert_linearizable(&history);
        }
    }

    #[test]
    fn overlapping_puts_must_agree_on_their_order() {
        // Both puts claim to have replaced the initial absence: only one of them can.
        let history = vec![put(1, "x", (0, 10), "a", None), put(2, "x", (0, 10), "b", None)];
        assert_violation(&history, "x");
        // Consistent order: b first, then a.
        let history = vec![put(1, "x", (0, 10), "a", Some("b")), put(2, "x", (0, 10), "b", None)];
        assert_linearizable(&history);
    }

    #[test]
    fn touching_intervals_count_as_overlapping() {
        // The get is invoked at the very instant the put completes: either order is allowed.
        let history = vec![put(1, "x", (0, 10), "a", None), get(2, "x", (10, 20), None)];
        assert_linearizable(&history);
        // One tick later the put is definitely first.
        let history = vec![put(1, "x", (0, 10), "a", None), get(2, "x", (11, 20), None)];
        assert_violation(&history, "x");
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        let history = vec![put(1, "x", (0, 10), "a", None), get(2, "x", (20, 30), None)];
        let verdict = assert_violation(&history, "x");
        assert_eq!(
            verdict,
            Verdict::NotLinearizable {
                key: "x".into(),
                ops: vec![0, 1],
                longest_prefix: vec![0],
                operations: history.clone(),
            }
        );
        let text = verdict.to_string();
        assert!(text.contains("\"x\""), "{text}");
        assert!(text.contains("#1"), "{text}");
        assert!(text.contains("value absent"), "{text}");
        assert!(text.contains("[20, 30]"), "{text}");
    }

    #[test]
    fn lost_write_is_not_linearizable() {
        let history = vec![
            put(1, "x", (0, 10), "1", None),
            put(2, "x", (20, 30), "2", Some("1")),
            get(3, "x", (40, 50), Some("1")),
        ];
        assert_violation(&history, "x");
        // Even when the second put does not say what it replaced.
        let mut history = history;
        history[1].output = None;
        assert_violation(&history, "x");
    }

    #[test]
    fn readers_disagreeing_on_write_order_is_not_linearizable() {
        // Two long concurrent writes. Reader A sees 1 then 2 (so 1 was written first), reader B
        // sees 2 then 1 (so 2 was written first). Each reader alone is fine; together they
        // require put1 < A1 < put2 < B1 < put1.
        let writes = [
            op(1, "x", Input::Put { value: "1".into() }, None, 0, Some(100)),
            op(2, "x", Input::Put { value: "2".into() }, None, 0, Some(100)),
        ];
        let reader_a = [get(3, "x", (10, 20), Some("1")), get(3, "x", (30, 40), Some("2"))];
        let reader_b = [get(4, "x", (10, 20), Some("2")), get(4, "x", (30, 40), Some("1"))];

        let only_a: Vec<Operation> = writes.iter().chain(&reader_a).cloned().collect();
        assert_linearizable(&only_a);
        let only_b: Vec<Operation> = writes.iter().chain(&reader_b).cloned().collect();
        assert_linearizable(&only_b);
        let both: Vec<Operation> =
            writes.iter().chain(&reader_a).chain(&reader_b).cloned().collect();
        assert_violation(&both, "x");

        // The same after both writes have completed.
        let writes = [put(1, "x", (0, 10), "1", None), put(2, "x", (0, 10), "2", Some("1"))];
        let reader_a = [get(3, "x", (20, 30), Some("1")), get(3, "x", (40, 50), Some("2"))];
        let reader_b = [get(4, "x", (20, 30), Some("2")), get(4, "x", (40, 50), Some("1"))];
        let both: Vec<Operation> =
            writes.iter().chain(&reader_a).chain(&reader_b).cloned().collect();
        assert_violation(&both, "x");
    }

    // ---- unknown outcomes ----------------------------------------------------------------------

    #[test]
    fn unknown_put_may_take_effect_late() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            unknown_put(2, "x", 5, "b"),
            get(3, "x", (20, 30), Some("a")),
            // Observed long after the client gave up on it.
            get(3, "x", (1000, 1010), Some("b")),
            put(1, "x", (1020, 1030), "c", Some("b")),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_put_may_never_take_effect() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            unknown_put(2, "x", 5, "b"),
            get(3, "x", (20, 30), Some("a")),
            put(1, "x", (40, 50), "c", Some("a")),
            get(3, "x", (60, 70), Some("c")),
        ];
        assert_linearizable(&history);
        // The same when another write of the same value keeps it from being set aside.
        let mut history = history;
        history.push(put(1, "y", (0, 1), "b", None));
        history.push(unknown_put(1, "x", 80, "a"));
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_put_cannot_take_effect_before_its_invocation() {
        let history = vec![get(1, "x", (10, 20), Some("b")), unknown_put(2, "x", 50, "b")];
        assert_violation(&history, "x");
        // Overlapping the read is enough.
        let history = vec![get(1, "x", (10, 20), Some("b")), unknown_put(2, "x", 15, "b")];
        assert_linearizable(&history);
    }

    #[test]
    fn unknown_output_with_known_completion_must_take_effect_in_time() {
        // Completed at 10 with an unknown answer: it took effect by then (the documented meaning
        // of `output: None` with a completion time; the docs once said it might not have).
        let history = vec![
            op(1, "x", Input::Put { value: "a".into() }, None, 0, Some(10)),
            get(2, "x", (20, 30), Some("a")),
        ];
        assert_linearizable(&history);
        let history = vec![
            op(1, "x", Input::Put { value: "a".into() }, None, 0, Some(10)),
            get(2, "x", (20, 30), None),
        ];
        assert_violation(&history, "x");
    }

    #[test]
    fn unknown_get_and_cas_accept_anything() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            op(2, "x", Input::Get, None, 5, None),
            op(2, "x", Input::Get, None, 20, Some(30)),
            op(3, "x", Input::Cas { expected: some("a"), new: "b".into() }, None, 40, None),
            get(1, "x", (50, 60), Some("b")),
        ];
        assert_linearizable(&history);
        // The unknown cas can also be skipped.
        let mut history = history;
        history[4] = get(1, "x", (50, 60), Some("a"));
        assert_linearizable(&history);
    }

    #[test]
    fn unobserved_unknown_writes_do_not_blow_up_the_search() {
        // Forty pending writes that nobody ever observed, interleaved with reads.
        let mut history = vec![put(1, "x", (0, 1), "start", None)];
        for i in 0..40u64 {
            history.push(unknown_put(2 + i, "x", 10 * i + 2, &format!("lost{i}")));
            history.push(get(1, "x", (10 * i + 3, 10 * i + 4), Some("start")));
        }
        assert_linearizable(&history);
        history.push(get(1, "x", (1000, 1001), Some("lost7")));
        assert_linearizable(&history);
        history.push(get(1, "x", (1002, 1003), Some("start")));
        assert_violation(&history, "x");
    }

    /// Forty lost writes pending together, interleaved with reads that pin the state. Trying them
    /// in every combination would take 2^40 steps; the budget makes a blow-up fail the test.
    fn pending_lost_writes(value: impl Fn(u64) -> String) -> Vec<Operation> {
        let mut history = vec![put(1, "x", (0, 1), "start", None)];
        for i in 0..40u64 {
            history.push(unknown_put(2 + i, "x", 10 * i + 2, &value(i)));
            history.push(get(1, "x", (10 * i + 3, 10 * i + 4), Some("start")));
        }
        history
    }

    #[test]
    fn lost_writes_of_one_value_do_not_blow_up_the_search() {
        let budget = 1_000_000;
        let mut history = pending_lost_writes(|_| "same".to_owned());
        assert_eq!(check_with_budget(&history, budget), Ok(Verdict::Linearizable));
        history.push(get(1, "x", (1000, 1001), Some("same")));
        assert_eq!(check_with_budget(&history, budget), Ok(Verdict::Linearizable));
        history.push(get(1, "x", (1002, 1003), Some("start")));
        let verdict = check_with_budget(&history, budget).unwrap();
        assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{verdict}");
    }

    #[test]
    fn lost_compare_and_swaps_that_cannot_match_do_not_blow_up_the_search() {
        let budget = 1_000_000;
        let mut history = vec![put(1, "x", (0, 1), "start", None)];
        for i in 0..40u64 {
            let input = Input::Cas { expected: some("other"), new: "same".into() };
            history.push(op(2 + i, "x", input, None, 10 * i + 2, None));
            history.push(get(1, "x", (10 * i + 3, 10 * i + 4), Some("start")));
        }
        assert_eq!(check_with_budget(&history, budget), Ok(Verdict::Linearizable));
        history.push(get(1, "x", (1000, 1001), Some("same")));
        let verdict = check_with_budget(&history, budget).unwrap();
        assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{verdict}");
    }

    #[test]
    fn lost_operations_may_take_effect_back_to_back() {
        // Only the order put "1", cas 1 -> 2, get explains the read, and nothing answered runs
        // between the two lost operations.
        let history = vec![
            op(1, "x", Input::Put { value: "1".into() }, None, 0, None),
            op(2, "x", Input::Cas { expected: some("1"), new: "2".into() }, None, 1, None),
            get(3, "x", (10, 20), Some("2")),
        ];
        assert_linearizable(&history);
        // Two lost puts of one value, the second one observed after an answered put.
        let history = vec![
            unknown_put(1, "x", 0, "1"),
            put(2, "x", (0, 5), "2", None),
            unknown_put(3, "x", 1, "1"),
            get(4, "x", (10, 20), Some("1")),
            put(4, "x", (30, 40), "3", Some("1")),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn observed_lost_writes_do_not_blow_up_the_search() {
        let budget = 1_000_000;
        let mut history = pending_lost_writes(|i| format!("lost{i}"));
        // Every lost write shows up late, in reverse order of invocation.
        for i in 0..40u64 {
            history.push(get(
                1,
                "x",
                (1000 + 10 * i, 1001 + 10 * i),
                Some(&format!("lost{}", 39 - i)),
            ));
        }
        assert_eq!(check_with_budget(&history, budget), Ok(Verdict::Linearizable));
        // A value that cannot come back once overwritten.
        history.push(get(1, "x", (2000, 2001), Some("lost5")));
        let verdict = check_with_budget(&history, budget).unwrap();
        assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "{verdict}");
    }

    // ---- compare-and-swap ----------------------------------------------------------------------

    #[test]
    fn cas_consistent_with_puts_is_linearizable() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            cas(2, "x", (20, 30), (Some("a"), "b"), (true, Some("b"))),
            cas(3, "x", (40, 50), (Some("a"), "c"), (false, Some("b"))),
            get(1, "x", (60, 70), Some("b")),
            cas(2, "y", (0, 10), (None, "z"), (true, Some("z"))),
            cas(3, "y", (5, 15), (None, "w"), (false, Some("z"))),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn cas_swapping_an_impossible_value_is_not_linearizable() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            // "x" holds "a"; expecting absent cannot succeed.
            cas(2, "x", (20, 30), (None, "b"), (true, Some("b"))),
        ];
        assert_violation(&history, "x");
        // Two concurrent CASes from the same expected value cannot both succeed.
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            cas(2, "x", (20, 30), (Some("a"), "b"), (true, Some("b"))),
            cas(3, "x", (20, 30), (Some("a"), "c"), (true, Some("c"))),
        ];
        assert_violation(&history, "x");
        // Reports a swap although the expected value was not current, even though the value it
        // reports afterwards is right.
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            cas(2, "x", (20, 30), (Some("b"), "a"), (true, Some("a"))),
        ];
        assert_violation(&history, "x");
    }

    #[test]
    fn cas_failing_with_the_expected_value_is_not_linearizable() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            cas(2, "x", (20, 30), (Some("a"), "b"), (false, Some("a"))),
        ];
        assert_violation(&history, "x");
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            cas(2, "x", (20, 30), (Some("q"), "b"), (false, Some("z"))),
        ];
        assert_violation(&history, "x");
    }

    // ---- keys ----------------------------------------------------------------------------------

    #[test]
    fn violation_on_one_key_is_reported_when_others_are_fine() {
        let history = vec![
            put(1, "a", (0, 10), "1", None),
            put(1, "b", (0, 10), "1", None),
            get(2, "a", (20, 30), Some("1")),
            get(2, "b", (20, 30), None),
            put(3, "c", (0, 10), "1", None),
            get(3, "c", (20, 30), Some("1")),
        ];
        let verdict = assert_violation(&history, "b");
        let Verdict::NotLinearizable { ops, .. } = &verdict else { unreachable!() };
        assert_eq!(ops, &[1, 3]);
    }

    #[test]
    fn keys_are_checked_independently() {
        // Across keys the reads disagree with any single global order of the writes, but each key
        // is a register of its own, so the history is linearizable.
        let history = vec![
            put(1, "a", (0, 10), "1", None),
            put(2, "b", (0, 10), "1", None),
            get(3, "a", (0, 10), None),
            get(3, "b", (0, 10), Some("1")),
            get(4, "b", (0, 10), None),
            get(4, "a", (0, 10), Some("1")),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn first_failing_key_is_reported_and_failures_win_over_unknown() {
        let history = vec![
            get(1, "z", (20, 30), None),
            put(1, "z", (0, 10), "1", None),
            get(1, "m", (20, 30), None),
            put(1, "m", (0, 10), "1", None),
        ];
        assert_violation(&history, "m");
        let verdict = check_with_budget(&history, 0).unwrap();
        assert_eq!(verdict, Verdict::Unknown { key: "m".into() });

        // Key "a" needs more steps than the budget allows, key "b" fails within it: the failure
        // is reported even though "a" comes first.
        let mut history: Vec<Operation> =
            (0..10).map(|i| get(1, "a", (10 * i, 10 * i + 1), None)).collect();
        history.push(put(2, "b", (0, 10), "1", None));
        history.push(get(2, "b", (20, 30), None));
        let verdict = check_with_budget(&history, 5).unwrap();
        assert!(
            matches!(&verdict, Verdict::NotLinearizable { key, .. } if key == "b"),
            "{verdict}"
        );
        history.pop();
        let verdict = check_with_budget(&history, 5).unwrap();
        assert_eq!(verdict, Verdict::Unknown { key: "a".into() });
    }

    // ---- malformed histories and budget --------------------------------------------------------

    #[test]
    fn completed_before_invoked_is_an_error() {
        let history = vec![put(1, "x", (0, 10), "a", None), get(2, "x", (30, 20), Some("a"))];
        let error = check(&history).unwrap_err();
        assert_eq!(
            error,
            HistoryError::CompletedBeforeInvoked { index: 1, invoked: 30, completed: 20 }
        );
        assert!(error.to_string().contains("#1"));
    }

    #[test]
    fn mismatched_output_is_an_error() {
        let history = vec![op(1, "x", Input::Get, Some(Output::Put { prev: None }), 0, Some(1))];
        assert_eq!(check(&history), Err(HistoryError::MismatchedOutput { index: 0 }));
    }

    #[test]
    fn exhausted_budget_is_unknown() {
        let history = vec![
            put(1, "x", (0, 10), "a", None),
            get(2, "x", (5, 15), Some("a")),
            put(3, "x", (20, 30), "b", Some("a")),
            get(1, "x", (40, 50), Some("b")),
        ];
        assert_eq!(check_with_budget(&history, 1), Ok(Verdict::Unknown { key: "x".into() }));
        assert_eq!(check_with_budget(&history, 1_000), Ok(Verdict::Linearizable));
        let text = Verdict::Unknown { key: "x".into() }.to_string();
        assert!(text.contains("\"x\"") && text.contains("budget"), "{text}");
    }

    #[test]
    fn verdict_text_explains_the_failure() {
        let history = vec![
            put(7, "k", (0, 10), "a", None),
            cas(8, "k", (20, 30), (Some("a"), "b"), (true, Some("b"))),
            unknown_put(9, "k", 25, "c"),
            get(7, "k", (40, 50), Some("a")),
        ];
        let text = assert_violation(&history, "k").to_string();
        for needle in [
            "not linearizable",
            "\"k\"",
            "client 7 [0, 10]",
            "client 9 [25, never completed]",
            "put \"a\" -> prev absent",
            "cas if \"a\" then \"b\" -> swapped, now \"b\"",
            "unknown outcome",
            "#3",
            "longest linearizable prefix",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    // ---- generated histories -------------------------------------------------------------------

    /// splitmix64: a tiny seeded generator, so generated histories are reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n`.
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// Uniform in `low..=high`.
        fn between(&mut self, low: u64, high: u64) -> u64 {
            low + self.below(high - low + 1)
        }

        fn percent(&mut self, p: u64) -> bool {
            self.below(100) < p
        }
    }

    struct Shape {
        ops: usize,
        clients: usize,
        keys: u64,
        /// Chance that an operation's outcome is lost.
        unknown_percent: u64,
    }

    /// A linearizable history: clients issue operations back to back, every operation takes
    /// effect at a random instant inside its interval, and outputs come from replaying those
    /// instants against a sequential map. Every written value is unique.
    fn generate(rng: &mut Rng, shape: &Shape) -> Vec<Operation> {
        struct Draft {
            op: Operation,
            /// When it takes effect, or `None` for a lost operation that never did.
            point: Option<u64>,
            /// Whether the client received the answer.
            answered: bool,
        }

        let mut clock = vec![0u64; shape.clients];
        let mut written: Vec<Vec<String>> = vec![Vec::new(); shape.keys as usize];
        let mut drafts: Vec<Draft> = Vec::with_capacity(shape.ops);
        for n in 0..shape.ops {
            // The client whose previous operation finished first goes next (ties: lowest id).
            let client = (0..shape.clients).min_by_key(|&c| (clock[c], c)).unwrap();
            let invoked = clock[client] + rng.below(4);
            let completed = invoked + rng.between(1, 20);
            clock[client] = completed + rng.below(3);
            let key_index = rng.below(shape.keys) as usize;
            let fresh = format!("v{n}");
            let input = match rng.below(10) {
                0..=3 => Input::Put { value: fresh.clone() },
                4..=7 => Input::Get,
                _ => {
                    let recent = &written[key_index];
                    let choice = rng.below(4) as usize;
                    let expected = recent.len().checked_sub(1 + choice).map(|i| recent[i].clone());
                    Input::Cas { expected, new: fresh.clone() }
                }
            };
            if !matches!(input, Input::Get) {
                written[key_index].push(fresh);
            }
            let point = invoked + rng.below(completed - invoked + 1);
            let (point, completed, answered) = if rng.percent(shape.unknown_percent) {
                match rng.below(3) {
                    // Lost and never applied.
                    0 => (None, None, false),
                    // Lost, but applied at some instant, possibly long after the client gave up.
                    1 => (Some(point + rng.below(200)), None, false),
                    // The answer was lost but the completion time is known.
                    _ => (Some(point), Some(completed), false),
                }
            } else {
                (Some(point), Some(completed), true)
            };
            let op = Operation {
                client: client as u64,
                key: format!("k{key_index}"),
                input,
                output: None,
                invoked,
                completed,
            };
            drafts.push(Draft { op, point, answered });
        }

        let mut order: Vec<usize> =
            (0..drafts.len()).filter(|&i| drafts[i].point.is_some()).collect();
        order.sort_by_key(|&i| (drafts[i].point, i));
        let mut store: HashMap<String, Option<String>> = HashMap::new();
        for i in order {
            let draft = &mut drafts[i];
            let state = store.entry(draft.op.key.clone()).or_default();
            let output = match &draft.op.input {
                Input::Put { value } => Output::Put { prev: state.replace(value.clone()) },
                Input::Get => Output::Get { value: state.clone() },
                Input::Cas { expected, new } => {
                    if state == expected {
                        *state = Some(new.clone());
                        Output::Cas { swapped: true, current: state.clone() }
                    } else {
                        Output::Cas { swapped: false, current: state.clone() }
                    }
                }
            };
            if draft.answered {
                draft.op.output = Some(output);
            }
        }
        drafts.into_iter().map(|draft| draft.op).collect()
    }

    /// Makes a completed get read a value nobody ever wrote.
    fn corrupt_read(rng: &mut Rng, history: &mut [Operation]) -> Option<usize> {
        let reads: Vec<usize> = (0..history.len())
            .filter(|&i| matches!(history[i].output, Some(Output::Get { .. })))
            .collect();
        let victim = *reads.get(rng.below(reads.len().max(1) as u64) as usize)?;
        history[victim].output = Some(Output::Get { value: some("never-written") });
        Some(victim)
    }

    /// Finds put P, put Q and get G with known answers on one key such that P completed before Q
    /// was invoked and Q completed before G was invoked, and makes G read P's value, which Q
    /// provably overwrote (every written value is unique).
    fn corrupt_stale(history: &mut [Operation]) -> Option<usize> {
        let known_put = |op: &Operation| matches!(op.output, Some(Output::Put { .. }));
        let known_get = |op: &Operation| matches!(op.output, Some(Output::Get { .. }));
        for p in history.iter().filter(|op| known_put(op)) {
            let Some(p_done) = p.completed else { continue };
            for q in history.iter().filter(|op| known_put(op)) {
                let Some(q_done) = q.completed else { continue };
                if q.key != p.key || q.invoked <= p_done {
                    continue;
                }
                let Some(g) = history
                    .iter()
                    .position(|g| g.key == p.key && g.invoked > q_done && known_get(g))
                else {
                    continue;
                };
                let Input::Put { value } = &p.input else { unreachable!() };
                let stale = Some(Output::Get { value: Some(value.clone()) });
                history[g].output = stale;
                return Some(g);
            }
        }
        None
    }

    #[test]
    fn generated_linearizable_histories_pass_and_corrupted_ones_fail() {
        let mut stale_checked = 0;
        for seed in 0..200u64 {
            let mut rng = Rng(seed);
            let shape = Shape {
                ops: rng.between(50, 300) as usize,
                clients: rng.between(2, 8) as usize,
                keys: rng.between(1, 4),
                unknown_percent: rng.below(15),
            };
            let history = generate(&mut rng, &shape);
            let verdict = verdict(&history);
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");

            let mut corrupted = history.clone();
            let victim = corrupt_read(&mut rng, &mut corrupted).expect("some completed read");
            let key = corrupted[victim].key.clone();
            let verdict = assert_violation(&corrupted, &key);
            let Verdict::NotLinearizable { ops, longest_prefix, .. } = &verdict else {
                unreachable!()
            };
            assert!(ops.contains(&victim), "seed {seed}");
            assert!(!longest_prefix.contains(&victim), "seed {seed}");

            let mut corrupted = history.clone();
            if let Some(victim) = corrupt_stale(&mut corrupted) {
                let key = corrupted[victim].key.clone();
                assert_violation(&corrupted, &key);
                stale_checked += 1;
            }
        }
        assert!(stale_checked > 100, "only {stale_checked} stale-read corruptions");
    }

    /// Decides linearizability of a tiny history by trying every order of its operations.
    fn brute_force(history: &[Operation]) -> bool {
        fn extend(
            history: &[Operation],
            placed: &mut Vec<bool>,
            store: &HashMap<&str, Option<String>>,
        ) -> bool {
            if placed.iter().all(|&p| p) {
                return true;
            }
            for next in 0..history.len() {
                let op = &history[next];
                // Everything that completed before `op` was invoked must already be placed.
                let too_early = (0..history.len()).any(|other| {
                    !placed[other]
                        && other != next
                        && history[other].completed.is_some_and(|done| done < op.invoked)
                });
                if placed[next] || too_early {
                    continue;
                }
                let state = store.get(op.key.as_str()).cloned().flatten();
                let (after, answer) = match &op.input {
                    Input::Put { value } => (Some(value.clone()), Output::Put { prev: state }),
                    Input::Get => (state.clone(), Output::Get { value: state }),
                    Input::Cas { expected, new } if state == *expected => (
                        Some(new.clone()),
                        Output::Cas { swapped: true, current: Some(new.clone()) },
                    ),
                    Input::Cas { .. } => {
                        (state.clone(), Output::Cas { swapped: false, current: state })
                    }
                };
                if op.output.as_ref().is_some_and(|output| *output != answer) {
                    continue;
                }
                let mut store = store.clone();
                store.insert(op.key.as_str(), after);
                placed[next] = true;
                let found = extend(history, placed, &store);
                placed[next] = false;
                if found {
                    return true;
                }
            }
            false
        }
        extend(history, &mut vec![false; history.len()], &HashMap::new())
    }

    /// A tiny history over few keys and few values (so values repeat), often not linearizable.
    fn tiny_history(rng: &mut Rng) -> Vec<Operation> {
        // Sometimes values repeat a lot, sometimes most are unique.
        let distinct = rng.between(2, 10);
        let value = move |rng: &mut Rng| rng.below(distinct).to_string();
        let maybe = |rng: &mut Rng| (rng.below(4) > 0).then(|| value(rng));
        let keys = rng.between(1, 2);
        let n = rng.between(1, 7);
        let mut drafts: Vec<(Operation, u64)> = Vec::new();
        for client in 0..n {
            let invoked = rng.below(20);
            let completed = invoked + rng.below(10);
            let input = match rng.below(3) {
                0 => Input::Put { value: value(rng) },
                1 => Input::Get,
                _ => Input::Cas { expected: maybe(rng), new: value(rng) },
            };
            let key = format!("k{}", rng.below(keys));
            let op =
                Operation { client, key, input, output: None, invoked, completed: Some(completed) };
            let point = invoked + rng.below(completed - invoked + 1);
            drafts.push((op, point));
        }
        // Outputs of one valid execution; some are then lost or corrupted.
        let mut order: Vec<usize> = (0..drafts.len()).collect();
        order.sort_by_key(|&i| drafts[i].1);
        let mut store: HashMap<String, Option<String>> = HashMap::new();
        for i in order {
            let op = &mut drafts[i].0;
            let state = store.entry(op.key.clone()).or_default();
            op.output = Some(match &op.input {
                Input::Put { value } => Output::Put { prev: state.replace(value.clone()) },
                Input::Get => Output::Get { value: state.clone() },
                Input::Cas { expected, new } => {
                    let swapped = state == expected;
                    if swapped {
                        *state = Some(new.clone());
                    }
                    Output::Cas { swapped, current: state.clone() }
                }
            });
        }
        let mut history: Vec<Operation> = drafts.into_iter().map(|(op, _)| op).collect();
        for op in &mut history {
            match rng.below(10) {
                0 | 1 => {
                    op.output = None;
                    op.completed = None;
                }
                2 => op.output = None,
                3 | 4 => {
                    op.output = Some(match op.input {
                        Input::Put { .. } => Output::Put { prev: maybe(rng) },
                        Input::Get => Output::Get { value: maybe(rng) },
                        Input::Cas { .. } => {
                            Output::Cas { swapped: rng.percent(50), current: maybe(rng) }
                        }
                    })
                }
                _ => {}
            }
        }
        history
    }

    #[test]
    fn tiny_histories_agree_with_brute_force() {
        let mut outcomes = [0usize; 2];
        let mut rng = Rng(2024);
        for round in 0..3_000 {
            let history = tiny_history(&mut rng);
            let expected = brute_force(&history);
            let verdict = verdict(&history);
            assert_eq!(
                verdict.is_linearizable(),
                expected,
                "round {round}: {verdict}\n{history:#?}"
            );
            if let Verdict::NotLinearizable { key, .. } = &verdict {
                let sub: Vec<Operation> =
                    history.iter().filter(|op| op.key == *key).cloned().collect();
                assert!(!brute_force(&sub), "round {round}: key {key} is fine on its own");
            }
            outcomes[usize::from(expected)] += 1;
        }
        assert!(outcomes.iter().all(|&count| count > 500), "{outcomes:?}");
    }

    #[test]
    fn generated_histories_are_order_independent() {
        let mut rng = Rng(42);
        let shape = Shape { ops: 200, clients: 5, keys: 3, unknown_percent: 10 };
        let history = generate(&mut rng, &shape);
        let mut reversed = history.clone();
        reversed.reverse();
        assert_eq!(verdict(&reversed), Verdict::Linearizable);
        corrupt_read(&mut rng, &mut reversed).unwrap();
        assert!(matches!(verdict(&reversed), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn long_single_key_history_checks_quickly() {
        let mut rng = Rng(7);
        let shape = Shape { ops: 2_000, clients: 8, keys: 1, unknown_percent: 0 };
        let history = generate(&mut rng, &shape);
        assert_eq!(check_with_budget(&history, 1_000_000), Ok(Verdict::Linearizable));

        let shape = Shape { ops: 2_000, clients: 8, keys: 1, unknown_percent: 5 };
        let history = generate(&mut rng, &shape);
        assert_eq!(check_with_budget(&history, 1_000_000), Ok(Verdict::Linearizable));
    }
}
