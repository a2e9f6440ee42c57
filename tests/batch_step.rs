//! Batched steps (`Engine::step_batch`): several sequences verified in one target pass give
//! each exactly its solo output, resident and offloaded, as they join and leave; one
//! target pass streams the offloaded layers once for the whole batch; a failing sequence
//! fails alone and is left as it was.

mod common;

use common::small_options as options;
use common::{batched, Job};

use subspec::{Engine, ErrorKind, SamplingParams, StepOptions, TreeParams};

fn solo(engine: &Engine, job: &Job) -> Vec<u32> {
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&job.prompt).unwrap();
    seq.generate(&job.opts, job.n, |_| true).unwrap()
}

fn samplings() -> [SamplingParams; 3] {
    [
        SamplingParams::greedy(),
        SamplingParams::new(0.9, 0, 0.9, 5),
        SamplingParams::new(1.2, 40, 1.0, 17),
    ]
}

/// `count` jobs with different prompts, samplings, tree shapes (plain among them),
/// lengths and joining iterations.
fn jobs(prompts: &[Vec<u32>], count: usize) -> Vec<Job> {
    let trees = [
        TreeParams::default().with_width(1).with_depth(6),
        TreeParams::default()
            .with_width(2)
            .with_depth(4)
            .with_max_tokens(24),
        TreeParams::default(),
    ];
    (0..count)
        .map(|i| {
            let s = samplings()[i % 3];
            let opts = if i % 4 == 3 {
                StepOptions::plain(s)
            } else {
                StepOptions::speculative(s).with_tree(trees[i % 3])
            };
            Job {
                prompt: prompts[i % prompts.len()].clone(),
                opts,
                n: 10 + 3 * (i % 5),
                join: i / 2,
            }
        })
        .collect()
}

fn check(engine: &Engine, jobs: &[Job], what: &str) {
    let (got, widest) = batched(engine, jobs);
    for (i, (job, got)) in jobs.iter().zip(&got).enumerate() {
        assert_eq!(got, &solo(engine, job), "{what}: job {i} ({:?})", job.opts);
    }
    println!("{what}: {} jobs, up to {widest} in one step", jobs.len());
}

/// Prompts for the real model: prose, code, numbers, French, a chat turn.
const TEXTS: &[&str] = &[
    "The history of the printing press begins",
    "def merge_sort(values):\n    ",
    "1, 2, 3, 5, 8, 13,",
    "La capitale de la France est",
    "<|im_start|>user\nWhat is the boiling point of water?<|im_end|>\n<|im_start|>assistant\n",
];

fn tokenize(engine: &Engine, texts: &[&str]) -> Vec<Vec<u32>> {
    let tok = engine.tokenizer().unwrap();
    texts.iter().map(|t| tok.encode(t, true).unwrap()).collect()
}

#[test]
fn batched_steps_equal_solo_steps_on_a_real_model() {
    let engine = common::engine(common::SMOLLM2);
    let prompts = tokenize(&engine, TEXTS);
    check(&engine, &jobs(&prompts, 8), "SmolLM2 resident");
}

fn tiny(tag: &str, qwen2: bool) -> std::path::PathBuf {
    let dir = common::temp_dir(tag);
    common::write_tiny_model(&dir, qwen2);
    dir
}

/// Prompts of 3 to 19 tokens, and one of 100: more than the engine's 64 tree tokens, so
/// part of it is prefilled alone before the rest joins a batched pass.
fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    (0..6u64)
        .map(|p| {
            (0..if p == 5 { 100 } else { 3 + 4 * p })
                .map(|i| ((i * 7919 + p * 104_729 + 13) % vocab as u64) as u32)
                .collect()
        })
        .collect()
}

#[test]
fn batched_steps_equal_solo_steps_offloaded_and_resident() {
    for qwen2 in [false, true] {
        let dir = tiny(if qwen2 { "bs-qwen2" } else { "bs-llama" }, qwen2);
        let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
        for budget in [Some(min), None] {
            let engine = Engine::load(&options(&dir, budget)).unwrap();
            let p = prompts(engine.config().vocab);
            for n in [1, 2, 3, 8] {
                let what = format!("tiny qwen2={qwen2} budget={budget:?}, {n} jobs");
                check(&engine, &jobs(&p, n), &what);
            }
        }
    }
}

#[test]
fn depths_chosen_together_by_cost_are_lossless() {
    // Half the jobs choose their depth by cost (auto_depth), together for the batch; the
    // others keep their trees and plain steps. Every job's output is its solo output
    // (== plain decoding's: speculation is lossless).
    let dir = tiny("bs-auto", true);
    let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
    for budget in [Some(min), None] {
        let engine = Engine::load(&options(&dir, budget)).unwrap();
        let p = prompts(engine.config().vocab);
        let mut js = jobs(&p, 8);
        for (i, j) in js.iter_mut().enumerate() {
            if i % 2 == 0 {
                j.opts = StepOptions::speculative(j.opts.sampling)
                    .with_tree(j.opts.tree.with_depth(12).with_auto_depth(true));
            }
        }
        for j in &js {
            let plain = Job {
                prompt: j.prompt.clone(),
                opts: StepOptions::plain(j.opts.sampling),
                n: j.n,
                join: 0,
            };
            assert_eq!(solo(&engine, j), solo(&engine, &plain), "{:?}", j.opts);
        }
        check(&engine, &js, &format!("auto depth, budget={budget:?}"));
        let all_auto: Vec<Job> = js.into_iter().step_by(2).collect();
        check(&engine, &all_auto, &format!("all auto, budget={budget:?}"));
    }
}

#[test]
fn one_target_pass_streams_the_offloaded_layers_once_for_the_batch() {
    let dir = tiny("bs-stream", true);
    let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
    let engine = Engine::load(&options(&dir, Some(min))).unwrap();
    // The reader thread reads ahead as buffers free up, so bytes are compared over
    // several passes, not one.
    let streamed = || engine.model().stream_stats().unwrap().bytes;
    let p = prompts(engine.config().vocab);
    let mut seqs: Vec<_> = (0..4).map(|_| engine.new_sequence().unwrap()).collect();
    for (s, p) in seqs.iter_mut().zip(&p) {
        s.append(p).unwrap();
        s.prefill_pending().unwrap();
    }
    let passes = 8;
    let before = streamed();
    let mut lone = engine.new_sequence().unwrap();
    lone.append(&p[0][..1]).unwrap();
    for _ in 0..passes {
        lone.step(&StepOptions::plain(SamplingParams::greedy()))
            .unwrap();
    }
    let alone = streamed() - before;
    assert!(alone > 0, "the minimum budget streams layers");
    let opts = vec![StepOptions::speculative(SamplingParams::greedy()); 4];
    let before = streamed();
    for _ in 0..passes {
        let mut batch: Vec<&mut subspec::Sequence> = seqs.iter_mut().collect();
        for r in engine.step_batch(&mut batch, &opts).unwrap() {
            assert!(!r.unwrap().is_empty());
        }
    }
    let batched = streamed() - before;
    println!("{passes} passes: one sequence {alone} bytes, four in batches {batched} bytes");
    // Four sequences stepping alone would stream four times as much.
    assert!(
        batched * 4 <= alone * 5,
        "{passes} batched steps of four sequences streamed {batched} bytes, {passes} plain \
         steps of one {alone}"
    );
}

#[test]
fn a_failing_sequence_fails_alone_and_unchanged() {
    let dir = tiny("bs-fail", false);
    let engine = Engine::load(&options(&dir, None)).unwrap();
    let p = prompts(engine.config().vocab);
    let greedy = StepOptions::speculative(SamplingParams::greedy());
    let want = solo(
        &engine,
        &Job {
            prompt: p[1].clone(),
            opts: greedy.with_max_tokens(5),
            n: 5,
            join: 0,
        },
    );
    let mut good = engine.new_sequence().unwrap();
    good.append(&p[1]).unwrap();
    // Full context: 256 tokens.
    let mut full = engine.new_sequence().unwrap();
    full.append(&vec![3; 256]).unwrap();
    // An open host-sampled iteration.
    let mut open = engine.new_sequence().unwrap();
    open.append(&p[2]).unwrap();
    open.begin(&[], &greedy).unwrap();
    // Options the engine cannot take (a tree over its max_tree_tokens of 64).
    let mut big = engine.new_sequence().unwrap();
    big.append(&p[3]).unwrap();
    // A plain sequence whose abort request is taken by the shared target pass.
    let mut stopped = engine.new_sequence().unwrap();
    stopped.append(&p[4][..1]).unwrap();
    stopped.abort_handle().abort();
    let before: Vec<(usize, usize)> = [&full, &open, &big, &stopped]
        .iter()
        .map(|s| (s.len(), s.cached()))
        .collect();
    let opts = [
        greedy.with_max_tokens(5),
        greedy,
        greedy,
        greedy.with_tree(TreeParams::default().with_max_tokens(65)),
        StepOptions::plain(SamplingParams::greedy()),
    ];
    let mut batch = [&mut good, &mut full, &mut open, &mut big, &mut stopped];
    let r = engine.step_batch(&mut batch, &opts).unwrap();
    let kinds: Vec<Option<ErrorKind>> = r
        .iter()
        .map(|r| r.as_ref().err().map(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            None,
            Some(ErrorKind::ContextFull),
            Some(ErrorKind::InvalidState),
            Some(ErrorKind::InvalidArgument),
            Some(ErrorKind::Aborted),
        ]
    );
    let got = r[0].as_ref().unwrap();
    assert_eq!(
        got[..],
        want[..got.len()],
        "the good sequence steps as alone"
    );
    let after: Vec<(usize, usize)> = [&full, &open, &big, &stopped]
        .iter()
        .map(|s| (s.len(), s.cached()))
        .collect();
    assert_eq!(before, after, "the failed sequences are unchanged");
    // And they step normally afterwards.
    open.cancel().unwrap();
    let mut again = [&mut open, &mut stopped];
    let r = engine.step_batch(&mut again, &[greedy, greedy]).unwrap();
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
}

#[test]
fn a_batch_call_that_cannot_be_made_is_an_error() {
    let dir = tiny("bs-call", false);
    let engine = Engine::load(&options(&dir, None)).unwrap();
    let other = Engine::load(&options(&dir, None)).unwrap();
    let mut a = engine.new_sequence().unwrap();
    let mut b = other.new_sequence().unwrap();
    a.append(&[1, 2]).unwrap();
    b.append(&[1, 2]).unwrap();
    let greedy = StepOptions::plain(SamplingParams::greedy());
    let err = engine.step_batch(&mut [&mut a], &[]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let err = engine
        .step_batch(&mut [&mut a, &mut b], &[greedy, greedy])
        .unwrap_err();
    assert!(err.to_string().contains("another engine"), "{err}");
    assert_eq!((a.len(), a.cached()), (2, 0));
    assert!(engine.step_batch(&mut [], &[]).unwrap().is_empty());
}

/// The trees of a batch grow together (one draft forward per level for all sequences),
/// and each grows exactly as it would alone: after the same steps every sequence has the
/// same tokens, draft steps and accepted draft tokens as its solo twin.
#[test]
fn trees_grown_together_are_the_trees_grown_alone() {
    let engine = common::engine(common::SMOLLM2);
    // One prompt per tree shape.
    let prompts = tokenize(&engine, &TEXTS[..4]);
    let trees = [
        TreeParams::default().with_width(1).with_depth(6),
        TreeParams::default()
            .with_width(2)
            .with_depth(5)
            .with_max_tokens(24),
        TreeParams::default(),
        TreeParams::default()
            .with_width(3)
            .with_depth(3)
            .with_max_tokens(16),
    ];
    let opts: Vec<StepOptions> = trees
        .iter()
        .zip(samplings().iter().cycle())
        .map(|(t, s)| StepOptions::speculative(*s).with_tree(*t))
        .collect();
    let fresh = |p: &Vec<u32>| {
        let mut s = engine.new_sequence().unwrap();
        s.append(p).unwrap();
        s.prefill_pending().unwrap();
        s
    };
    let mut together: Vec<_> = prompts.iter().map(fresh).collect();
    let mut alone: Vec<_> = prompts.iter().map(fresh).collect();
    for _ in 0..4 {
        let mut batch: Vec<&mut subspec::Sequence> = together.iter_mut().collect();
        for r in engine.step_batch(&mut batch, &opts).unwrap() {
            r.unwrap();
        }
        for (s, o) in alone.iter_mut().zip(&opts) {
            s.step(o).unwrap();
        }
    }
    for (i, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(t.tokens(), a.tokens(), "sequence {i}");
        let (ts, as_) = (t.stats(), a.stats());
        assert_eq!(
            (ts.iterations, ts.draft_steps, ts.accepted),
            (as_.iterations, as_.draft_steps, as_.accepted),
            "sequence {i}: iterations, draft steps, accepted"
        );
    }
}
