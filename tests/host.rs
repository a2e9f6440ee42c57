//! Host-owned sampling: a sampler written here walks each verified tree through
//! `Sequence::begin` / `logits` / `push` / `end`, and its speculative output equals its
//! plain output (`Sequence::eval` one token at a time) token for token, for stateless and
//! stateful samplers, resident and offloaded; the state errors leave the sequence as it was.

mod common;

use common::small_options as options;

use subspec::{Engine, ErrorKind, SamplingParams, Sequence, StepOptions};

/// A host's sampler: sees each position's logits once, in order, and may keep state.
trait HostSampler {
    fn pick(&mut self, logits: &[f32]) -> u32;
}

/// Ids by descending logit, ties by lower id.
fn ranked(logits: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    ids.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    ids
}

struct Greedy;
impl HostSampler for Greedy {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        ranked(logits)[0]
    }
}

/// Always the second most likely token (rarely what the draft proposes first).
struct Second;
impl HostSampler for Second {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        ranked(logits)[1]
    }
}

/// Temperature and top-p with its own RNG, advanced once per draw: the draws depend on
/// how many tokens it has sampled, so a sampler called an extra time would diverge.
struct TempTopP {
    temperature: f32,
    top_p: f32,
    state: u64,
}
impl HostSampler for TempTopP {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let u = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        let ids = ranked(logits);
        let max = logits[ids[0] as usize] as f64;
        let p: Vec<f64> = ids
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - max) / self.temperature as f64).exp())
            .collect();
        let total: f64 = p.iter().sum();
        let (mut mass, mut keep) = (0.0, 0);
        while keep < p.len() && mass < self.top_p as f64 * total {
            mass += p[keep];
            keep += 1;
        }
        let mut acc = 0.0;
        for (k, &i) in ids.iter().take(keep).enumerate() {
            acc += p[k];
            if acc >= u * mass {
                return i;
            }
        }
        ids[keep - 1]
    }
}

/// Greedy after a repetition penalty on every token it has emitted so far (stateful).
struct RepetitionPenalty {
    penalty: f32,
    seen: Vec<u32>,
}
impl HostSampler for RepetitionPenalty {
    fn pick(&mut self, logits: &[f32]) -> u32 {
        let mut l = logits.to_vec();
        for &t in &self.seen {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 {
                *x / self.penalty
            } else {
                *x * self.penalty
            };
        }
        let t = ranked(&l)[0];
        self.seen.push(t);
        t
    }
}

/// Makes a fresh sampler (its state at the start).
type MakeSampler = Box<dyn Fn() -> Box<dyn HostSampler>>;

fn samplers() -> Vec<(&'static str, MakeSampler)> {
    vec![
        ("greedy", Box::new(|| Box::new(Greedy))),
        ("second", Box::new(|| Box::new(Second))),
        (
            "temp-top-p",
            Box::new(|| {
                Box::new(TempTopP {
                    temperature: 0.8,
                    top_p: 0.9,
                    state: 0x9E37_79B9_7F4A_7C15,
                })
            }),
        ),
        (
            "repetition",
            Box::new(|| {
                Box::new(RepetitionPenalty {
                    penalty: 1.5,
                    seen: Vec::new(),
                })
            }),
        ),
    ]
}

/// Plain decoding with the host's sampler: `eval` one token at a time.
fn plain(engine: &Engine, prompt: &[u32], s: &mut dyn HostSampler, n: usize) -> Vec<u32> {
    let mut seq = engine.new_sequence().unwrap();
    let mut out = Vec::new();
    let mut input = prompt.to_vec();
    while out.len() < n {
        let logits = seq.eval(&input).unwrap();
        let t = s.pick(&logits);
        out.push(t);
        input = vec![t];
    }
    assert_eq!(&seq.tokens()[prompt.len()..], &out[..n - 1]);
    out
}

/// The host walk: begin, then sample and push while the tree has the next logits, end.
fn walk(
    seq: &mut Sequence,
    prompt: &[u32],
    s: &mut dyn HostSampler,
    n: usize,
    opts: &StepOptions,
) -> Vec<u32> {
    let start = seq.len();
    let mut input = prompt.to_vec();
    let mut out = Vec::new();
    while out.len() < n {
        seq.begin(&input, opts).unwrap();
        input.clear();
        loop {
            let t = s.pick(seq.logits().unwrap());
            out.push(t);
            if !seq.push(t).unwrap() || out.len() == n {
                break;
            }
        }
        seq.end().unwrap();
    }
    assert_eq!(&seq.tokens()[start + prompt.len()..], &out[..]);
    out
}

/// For every sampler: speculative host walk == plain eval == host walk without a draft.
fn check(engine: &Engine, prompt: &[u32], n: usize, what: &str) -> usize {
    let spec = StepOptions::speculative(SamplingParams::greedy())
        .with_tree(engine.default_tree().with_width(2).with_depth(6));
    let no_draft = StepOptions::plain(SamplingParams::greedy());
    let mut accepted = 0;
    for (name, make) in samplers() {
        let want = plain(engine, prompt, &mut *make(), n);
        let mut seq = engine.new_sequence().unwrap();
        let got = walk(&mut seq, prompt, &mut *make(), n, &spec);
        assert_eq!(got, want, "{what}: {name}, speculative walk vs plain");
        let st = seq.stats();
        assert_eq!(st.generated, n, "{what}: {name}");
        assert!(st.iterations <= n);
        accepted += st.accepted;
        let mut seq = engine.new_sequence().unwrap();
        let got = walk(&mut seq, prompt, &mut *make(), n, &no_draft);
        assert_eq!(got, want, "{what}: {name}, walk without a draft vs plain");
        assert_eq!(
            seq.stats().iterations,
            n,
            "one pass per token without a draft"
        );
    }
    accepted
}

#[test]
fn host_samplers_speculative_equals_plain_on_tiny_models() {
    for qwen2 in [false, true] {
        let dir = common::temp_dir(if qwen2 { "host-q" } else { "host-l" });
        common::write_tiny_model(&dir, qwen2);
        let engine = Engine::load(&options(&dir, None)).unwrap();
        let prompt: Vec<u32> = (0..6).map(|j| (j * 29 + 3) % 128).collect();
        check(&engine, &prompt, 40, &format!("tiny qwen2={qwen2}"));
    }
}

#[test]
fn host_samplers_speculative_equals_plain_offloaded() {
    let dir = common::temp_dir("host-off");
    common::write_tiny_model(&dir, true);
    let min = Engine::minimum_budget(&options(&dir, None)).unwrap();
    let engine = Engine::load(&options(&dir, Some(min))).unwrap();
    assert!(!engine.placement().unwrap().offloaded().is_empty());
    let prompt: Vec<u32> = (0..5).map(|j| (j * 17 + 1) % 128).collect();
    check(&engine, &prompt, 30, "tiny offloaded");
}

#[test]
fn host_samplers_speculative_equals_plain_on_smollm2() {
    let engine = common::engine(common::SMOLLM2);
    // "The three primary colours are" in SmolLM2's tokenizer.
    let prompt = [504, 1296, 3003, 14797, 359];
    let accepted = check(&engine, &prompt, 24, "SmolLM2");
    assert!(
        accepted > 0,
        "the draft was never accepted: no tree was walked"
    );
}

fn tiny_engine(tag: &str) -> Engine {
    let dir = common::temp_dir(tag);
    common::write_tiny_model(&dir, false);
    Engine::load(&options(&dir, None)).unwrap()
}

#[test]
fn the_host_walk_matches_subspec_step_with_the_same_sampling() {
    // The internal sampler's draw depends only on (seed, position): a host that samples the
    // same way must see the same tokens as `step`. Greedy is that case.
    let engine = tiny_engine("host-step");
    let prompt = [1u32, 2, 3, 4];
    let opts = StepOptions::speculative(SamplingParams::greedy());
    let mut seq = engine.new_sequence().unwrap();
    seq.append(&prompt).unwrap();
    let want = seq.generate(&opts, 25, |_| true).unwrap();
    let mut seq = engine.new_sequence().unwrap();
    assert_eq!(
        walk(&mut seq, &prompt, &mut Greedy, want.len(), &opts),
        want
    );
    // Steps and walks mix: a step after a walk continues the same sequence.
    let next = seq.step(&opts).unwrap();
    let mut plain_seq = engine.new_sequence().unwrap();
    plain_seq.append(&prompt).unwrap();
    let all = plain_seq
        .generate(&opts, want.len() + next.len(), |_| true)
        .unwrap();
    assert_eq!(&all[want.len()..], &next[..]);
}

#[test]
fn top_logprobs_are_the_log_softmax_of_the_logits() {
    let engine = tiny_engine("host-logprobs");
    let mut seq = engine.new_sequence().unwrap();
    let opts = StepOptions::speculative(SamplingParams::greedy());
    seq.begin(&[7, 8, 9], &opts).unwrap();
    let logits = seq.logits().unwrap().to_vec();
    let top = seq.top_logprobs(5).unwrap();
    assert_eq!(top.len(), 5);
    let ids = ranked(&logits);
    let max = logits[ids[0] as usize] as f64;
    let lse = max
        + logits
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    for (k, &(id, lp)) in top.iter().enumerate() {
        assert_eq!(id, ids[k]);
        assert!((lp as f64 - (logits[id as usize] as f64 - lse)).abs() < 1e-5);
    }
    let all = seq.top_logprobs(1_000_000).unwrap();
    assert_eq!(all.len(), logits.len());
    let total: f64 = all.iter().map(|&(_, lp)| (lp as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
    assert!(seq.top_logprobs(0).unwrap().is_empty());
    seq.cancel().unwrap();
}

#[test]
fn state_errors_leave_the_sequence_unchanged() {
    let engine = tiny_engine("host-errors");
    let opts = StepOptions::speculative(SamplingParams::greedy());
    let mut seq = engine.new_sequence().unwrap();
    let kind = |r: subspec::Result<()>| r.unwrap_err().kind();
    // Nothing open.
    assert_eq!(kind(seq.logits().map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.push(1).map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.end().map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.cancel()), ErrorKind::InvalidState);
    // An empty sequence cannot begin without input; a bad token is refused; no state left.
    assert_eq!(kind(seq.begin(&[], &opts)), ErrorKind::InvalidArgument);
    assert_eq!(
        kind(seq.begin(&[1, 100_000], &opts)),
        ErrorKind::InvalidToken
    );
    assert!(seq.is_empty() && !seq.is_iterating());

    seq.begin(&[5, 6, 7], &opts).unwrap();
    assert_eq!(kind(seq.begin(&[1], &opts)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.step(&opts).map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.eval(&[1]).map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.push(100_000).map(drop)), ErrorKind::InvalidToken);
    assert_eq!(seq.tokens(), &[5, 6, 7]);
    // Push tokens until one is not in the tree; then the iteration has ended.
    let mut pushed = 0;
    loop {
        let t = Second.pick(seq.logits().unwrap());
        pushed += 1;
        if !seq.push(t).unwrap() {
            break;
        }
    }
    let tokens = seq.tokens().to_vec();
    assert_eq!(tokens.len(), 3 + pushed);
    assert_eq!(kind(seq.push(1).map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.logits().map(drop)), ErrorKind::InvalidState);
    assert_eq!(kind(seq.top_logprobs(3).map(drop)), ErrorKind::InvalidState);
    assert_eq!(seq.tokens(), &tokens[..]);
    assert_eq!(seq.end().unwrap(), pushed);
    assert_eq!(kind(seq.end().map(drop)), ErrorKind::InvalidState);
    assert_eq!(seq.tokens(), &tokens[..]);
    assert_eq!(seq.stats().generated, pushed);

    // Cancel: exactly as before begin, and the continuation is unaffected.
    let stats = seq.stats().clone();
    seq.begin(&[9, 10], &opts).unwrap();
    let t = Greedy.pick(seq.logits().unwrap());
    seq.push(t).unwrap();
    seq.cancel().unwrap();
    assert_eq!(seq.tokens(), &tokens[..]);
    assert_eq!(seq.stats(), &stats);
    let mut fresh = engine.new_sequence().unwrap();
    let a = seq.eval(&[]).unwrap();
    let b = fresh.eval(&tokens).unwrap();
    assert_eq!(
        a, b,
        "the logits after a cancel are those of the same tokens afresh"
    );

    // Ending with no push commits the input.
    seq.begin(&[11], &opts).unwrap();
    assert_eq!(seq.end().unwrap(), 0);
    assert_eq!(seq.len(), tokens.len() + 1);
    // Truncate cancels an open iteration in Rust (the C ABI refuses it instead).
    seq.begin(&[12], &opts).unwrap();
    seq.truncate(2);
    assert!(!seq.is_iterating());
    assert_eq!(seq.tokens(), &[5, 6]);
}

#[test]
fn pushing_at_the_context_limit_is_context_full() {
    let dir = common::temp_dir("host-ctx");
    common::write_tiny_model(&dir, false);
    let mut o = options(&dir, None);
    o.max_context = 12;
    let engine = Engine::load(&o).unwrap();
    let opts = StepOptions::speculative(SamplingParams::greedy());
    let prompt: Vec<u32> = (1..=8).collect();
    let want = plain(&engine, &prompt, &mut Greedy, 4);
    let mut seq = engine.new_sequence().unwrap();
    let mut input = prompt.clone();
    let mut out = Vec::new();
    'outer: loop {
        seq.begin(&input, &opts).unwrap();
        input.clear();
        loop {
            let t = Greedy.pick(seq.logits().unwrap());
            match seq.push(t) {
                Ok(true) => out.push(t),
                Ok(false) => {
                    out.push(t);
                    break;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::ContextFull);
                    seq.end().unwrap();
                    break 'outer;
                }
            }
        }
        seq.end().unwrap();
        if seq.len() == 12 {
            let e = seq.begin(&[], &opts).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ContextFull);
            break;
        }
    }
    assert_eq!(out, want);
    assert_eq!(seq.len(), 12);
}
