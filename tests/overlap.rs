//! Drafting during target passes (issue 14, item 2): while a pass waits for a streamed
//! layer, the draft grows the tree under verification deeper, and the next step starts
//! from the part under the token the step emitted last. SmolLM2 at its minimum budget
//! (every layer streamed) with every read of the model file slowed by a millisecond, so
//! passes wait and the draft runs in them. Output stays exactly the target's (greedy
//! and sampled, against a resident engine's plain decoding); the draft really ran during
//! passes and its kept trees were used; starting from kept trees costs little acceptance
//! against fresh trees; and calls that write the draft's slots drop a kept tree. (Where a
//! kept tree's K/V goes is checked slot by slot in `engine::sequence`'s unit test.)
//!
//! The fault plan that slows the reads is process-wide, so these tests take turns.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use subspec::internals::carried_nodes;
use subspec::internals::faults::{self, Fault};
use subspec::internals::measure;
use subspec::{Engine, SamplingParams, Sequence, StepOptions, DEFAULT_MAX_TREE_TOKENS};

static TURN: Mutex<()> = Mutex::new(());

/// The context of these tests' engines (trees up to the engine's default size).
const CONTEXT: usize = 512;

/// SmolLM2 at its minimum budget: every layer streamed, each read a millisecond late.
fn slow_offloaded() -> Engine {
    let e = common::smollm2_all_streamed(CONTEXT, DEFAULT_MAX_TREE_TOKENS);
    faults::inject(Fault::Stall(Duration::from_millis(1)), 0, u64::MAX);
    e
}

/// A prompt the draft predicts well: long accepted paths, so the draft's deeper nodes
/// are often where the next step starts.
fn prompt(e: &Engine) -> Vec<u32> {
    let text = "Count from 1 to 60, comma separated: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,";
    e.tokenizer().unwrap().encode(text, true).unwrap()
}

fn generate(seq: &mut Sequence, opts: &StepOptions, n: usize) -> Vec<u32> {
    seq.generate(opts, n, |_| true).unwrap()
}

/// The resident engine's plain tokens after `prompt`.
fn reference(prompt: &[u32], sampling: SamplingParams, n: usize) -> Vec<u32> {
    let e = Engine::load(&common::smollm2_options(
        CONTEXT,
        DEFAULT_MAX_TREE_TOKENS,
        None,
    ))
    .unwrap();
    let mut seq = e.new_sequence().unwrap();
    seq.append(prompt).unwrap();
    generate(&mut seq, &StepOptions::plain(sampling), n)
}

#[test]
fn drafting_during_slow_passes_keeps_every_token_and_pays() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let engine = slow_offloaded();
    let p = prompt(&engine);
    let n = 64;
    for sampling in [
        SamplingParams::greedy(),
        SamplingParams::new(0.8, 0, 0.95, 7),
    ] {
        let want = reference(&p, sampling, n);
        let opts = StepOptions::speculative(sampling).with_tree(engine.default_tree());
        let mut seq = engine.new_sequence().unwrap();
        seq.append(&p).unwrap();
        assert_eq!(generate(&mut seq, &opts, n), want, "{sampling:?}");
        let st = seq.stats().clone();
        assert!(
            st.overlapped_steps > 0,
            "the draft ran during passes: {st:?}"
        );
        if sampling == SamplingParams::greedy() {
            assert!(st.reused_trees > 0, "a kept tree started a step: {st:?}");
            // The same steps with nothing kept (a truncate to the same length drops the
            // kept tree before every step): kept trees must start steps about as well.
            let mut fresh = engine.new_sequence().unwrap();
            fresh.append(&p).unwrap();
            let mut out = Vec::new();
            while out.len() < n {
                let len = fresh.len();
                fresh.truncate(len);
                out.extend(fresh.step(&opts.with_max_tokens(n - out.len())).unwrap());
            }
            assert_eq!(out, want);
            let f = fresh.stats();
            assert_eq!(f.reused_trees, 0);
            assert!(
                st.tau() >= 0.8 * f.tau(),
                "tau with kept trees {} against {} without",
                st.tau(),
                f.tau()
            );
        }
    }
    faults::clear();
}

/// A call on a sequence between steps.
type Call = fn(&mut Sequence, &StepOptions);

#[test]
fn calls_that_write_the_drafts_slots_drop_a_kept_tree() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let engine = slow_offloaded();
    let p = prompt(&engine);
    let opts = StepOptions::speculative(SamplingParams::greedy()).with_tree(engine.default_tree());
    // Room for every step below (at most 3 x 6 steps of at most 17 tokens).
    let want = reference(&p, SamplingParams::greedy(), 3 * 6 * 17 + 16);
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&p).unwrap();
    // Each call that drafts or prefills in the scratch slots, after a step that kept a
    // tree: the tree is dropped, the next step starts afresh, the tokens stay the target's.
    let calls: [(&str, Call); 3] = [
        ("begin + cancel", |s, o| {
            s.begin(&[], o).unwrap();
            s.cancel().unwrap();
        }),
        ("eval", |s, _| drop(s.eval(&[]).unwrap())),
        ("truncate", |s, _| {
            let len = s.len();
            s.truncate(len)
        }),
    ];
    for (what, call) in calls {
        let mut tries = 0;
        while carried_nodes(&seq) == 0 {
            seq.step(&opts).unwrap();
            tries += 1;
            assert!(tries < 6, "no step kept a tree before {what}");
        }
        let reused = seq.stats().reused_trees;
        call(&mut seq, &opts);
        assert_eq!(carried_nodes(&seq), 0, "{what} dropped the kept tree");
        seq.step(&opts).unwrap();
        assert_eq!(
            seq.stats().reused_trees,
            reused,
            "{what}: the next step starts afresh"
        );
    }
    let got = &seq.tokens()[p.len()..];
    assert!(got.len() <= want.len());
    assert_eq!(got, &want[..got.len()]);
    faults::clear();
}

/// `subspec passes`' measurement of the same thing: a verification with the draft in its
/// waits finishes draft steps there (a slow pass has room for several), and an engine
/// whose passes never wait (everything resident) has nothing to measure.
#[test]
fn passes_measure_draft_steps_in_a_verifications_waits() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let engine = slow_offloaded();
    let t = measure::passes(&engine, 16, 33, 2, 1).unwrap();
    faults::clear();
    let o = t
        .overlapped
        .expect("a streamed engine with a draft overlaps");
    assert!(o.draft_steps >= 1.0, "{t:?}");
    assert!(o.verify_s > 0.0 && t.draft_s > 0.0, "{t:?}");
    let resident = Engine::load(&common::smollm2_options(
        CONTEXT,
        DEFAULT_MAX_TREE_TOKENS,
        None,
    ))
    .unwrap();
    let t = measure::passes(&resident, 16, 33, 2, 1).unwrap();
    assert_eq!(t.overlapped, None);
}
