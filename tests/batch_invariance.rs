//! Batch invariance, bit for bit: a token's logits are identical whether it is computed
//! alone, in a chain, or inside a tree batch with unrelated siblings; and KV compaction
//! onto an accepted path leaves a cache that continues exactly like plain decoding.

mod common;

use subspec::internals::CpuBackend;
use subspec::internals::Model;
use subspec::internals::{AttnMask, Backend};

/// Logits of `chain` continuing `prompt`, fed one token at a time (plain decoding).
fn one_by_one<B: Backend>(m: &Model<B>, prompt: &[u32], chain: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = m.new_cache(prompt.len() + chain.len() + 8).unwrap();
    let pos: Vec<usize> = (0..prompt.len()).collect();
    m.forward(
        &mut cache,
        prompt,
        &pos,
        &AttnMask::causal(prompt.len()),
        &[],
    )
    .unwrap();
    cache.commit(prompt.len());
    chain
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let l = m
                .forward(
                    &mut cache,
                    &[t],
                    &[prompt.len() + i],
                    &AttnMask::causal(1),
                    &[0],
                )
                .unwrap();
            cache.commit(1);
            l
        })
        .collect()
}

fn check_model<B: Backend>(m: &Model<B>) {
    let v = m.config().vocab as u32;
    let prompt: Vec<u32> = (0..11u32).map(|i| (i * 31 + 5) % v).collect();
    let chain: Vec<u32> = (0..5u32).map(|i| (i * 17 + 3) % v).collect();
    let want = one_by_one(m, &prompt, &chain);
    let vocab = m.config().vocab;
    let n0 = prompt.len();

    // The whole chain in one batch.
    let mut cache = m.new_cache(64).unwrap();
    let pos: Vec<usize> = (0..n0).collect();
    m.forward(&mut cache, &prompt, &pos, &AttnMask::causal(n0), &[])
        .unwrap();
    cache.commit(n0);
    let rows: Vec<usize> = (0..chain.len()).collect();
    let pos: Vec<usize> = (n0..n0 + chain.len()).collect();
    let batch = m
        .forward(
            &mut cache,
            &chain,
            &pos,
            &AttnMask::causal(chain.len()),
            &rows,
        )
        .unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(
            &batch[i * vocab..(i + 1) * vocab],
            &w[..],
            "chain batch, token {i}"
        );
    }

    // A tree: the chain c0..c4 interleaved with distractor siblings.
    //   idx: 0=c0, 1=s(c0), 2=c1(c0), 3=s(c1 sibling), 4=c2(c1), 5=s(child of 3), 6=c3(c2), 7=c4(c3)
    let s = |i: u32| (i * 7 + 40) % v;
    let tokens = vec![
        chain[0],
        s(1),
        chain[1],
        s(2),
        chain[2],
        s(3),
        chain[3],
        chain[4],
    ];
    let parents = [
        None,
        None,
        Some(0),
        Some(0),
        Some(2),
        Some(3),
        Some(4),
        Some(6),
    ];
    let depth = [0, 0, 1, 1, 2, 2, 3, 4];
    let chain_rows = [0usize, 2, 4, 6, 7];
    let mask = AttnMask::from_parents(&parents).unwrap();
    let pos: Vec<usize> = depth.iter().map(|d| n0 + d).collect();
    let all: Vec<usize> = (0..tokens.len()).collect();
    let tree = m.forward(&mut cache, &tokens, &pos, &mask, &all).unwrap();
    for (i, &r) in chain_rows.iter().enumerate() {
        assert_eq!(
            &tree[r * vocab..(r + 1) * vocab],
            &want[i][..],
            "tree batch, chain token {i}"
        );
    }

    // Compaction onto the accepted path c0, c1, c2, then c3 alone continues exactly.
    cache.commit_subset(m.backend(), &[0, 2, 4]).unwrap();
    assert_eq!(cache.len(), n0 + 3);
    let next = m
        .forward(
            &mut cache,
            &[chain[3]],
            &[n0 + 3],
            &AttnMask::causal(1),
            &[0],
        )
        .unwrap();
    assert_eq!(next, want[3], "after compaction");

    // Prefill in one batch vs in chunks: same last logits. `one_by_one`'s prompt asked
    // for no logits, so its last layer wrote its K/V alone (`Model::forward`): the chain
    // read those, and `whole` the full layer's.
    let mut c1 = m.new_cache(64).unwrap();
    let all_tokens: Vec<u32> = prompt.iter().chain(&chain).copied().collect();
    let pos: Vec<usize> = (0..all_tokens.len()).collect();
    let whole = m
        .forward(
            &mut c1,
            &all_tokens,
            &pos,
            &AttnMask::causal(all_tokens.len()),
            &[all_tokens.len() - 1],
        )
        .unwrap();
    assert_eq!(whole, want[chain.len() - 1], "whole prefill");
}

#[test]
fn tiny_llama_is_batch_invariant() {
    let dir = common::temp_dir("bi-llama");
    common::write_tiny_model(&dir, false);
    check_model(&Model::load(&dir, CpuBackend).unwrap());
}

#[test]
fn tiny_qwen2_is_batch_invariant() {
    let dir = common::temp_dir("bi-qwen2");
    common::write_tiny_model(&dir, true);
    check_model(&Model::load(&dir, CpuBackend).unwrap());
}

#[test]
fn smollm2_is_batch_invariant() {
    let engine = common::engine(common::SMOLLM2);
    engine.install(|| check_model(engine.model()));
}

#[test]
fn qwen2_is_batch_invariant() {
    let engine = common::engine(common::QWEN2);
    engine.install(|| check_model(engine.model()));
}

/// The same checks on the CUDA backend (skipped, with a line saying so, without a GPU).
#[test]
fn tiny_models_are_batch_invariant_on_cuda() {
    let cuda = match subspec::internals::CudaBackend::new(0, None) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP tiny_models_are_batch_invariant_on_cuda: no CUDA device ({e})");
            return;
        }
    };
    for qwen2 in [false, true] {
        let dir = common::temp_dir(if qwen2 {
            "bi-cuda-qwen2"
        } else {
            "bi-cuda-llama"
        });
        common::write_tiny_model_with_head_dim(&dir, qwen2, 32);
        check_model(&Model::load(&dir, cuda.clone()).unwrap());
    }
    check_model(&Model::load(&common::synth_model_dir("smollm2-135m"), cuda).unwrap());
}
