//! Scoring a text: the mean negative log-likelihood of its tokens under the target or
//! the draft, in independent windows.

use super::{Engine, PREFILL_CHUNK};
use crate::backend::AttnMask;
use crate::error::{Error, Result};
use crate::model::Pass;
use crate::sample::nll;

impl Engine {
    /// Mean negative log-likelihood (nats) of `ids`, scored in independent windows of
    /// `ctx` tokens (each window predicts its tokens 1.. from its own prefix). Returns the
    /// number of scored tokens and the mean NLL. `pass` picks the target or the draft.
    pub fn perplexity(&self, ids: &[u32], ctx: usize, pass: Pass) -> Result<(usize, f64)> {
        if pass == Pass::Draft && !self.shared.model.has_draft() {
            return Err(Error::invalid_argument(
                "the engine was loaded without a draft",
            ));
        }
        if ctx < 2 || ctx > self.shared.max_context {
            return Err(Error::invalid_argument(format!(
                "perplexity window must be in 2..={}, got {ctx}",
                self.shared.max_context
            )));
        }
        if ids.len() < 2 {
            return Err(Error::invalid_argument(
                "perplexity needs at least 2 tokens",
            ));
        }
        let model = &self.shared.model;
        model.check_tokens(ids)?;
        let vocab = match pass {
            Pass::Draft => model.draft_vocab(),
            Pass::Target => model.config().vocab,
        };
        let (mut total, mut count) = (0f64, 0usize);
        for window in ids.chunks(ctx).filter(|w| w.len() >= 2) {
            let mut cache = model.new_cache(window.len())?;
            for start in (0..window.len()).step_by(PREFILL_CHUNK) {
                let chunk = &window[start..(start + PREFILL_CHUNK).min(window.len())];
                let positions: Vec<usize> = (start..start + chunk.len()).collect();
                let rows: Vec<usize> = (0..chunk.len()).collect();
                let logits = self.install(|| {
                    model.forward_at(
                        &mut cache,
                        pass,
                        0,
                        chunk,
                        &positions,
                        &AttnMask::causal(chunk.len()),
                        &rows,
                    )
                })?;
                cache.commit(chunk.len());
                for (r, row) in logits.chunks_exact(vocab).enumerate() {
                    let next = start + r + 1;
                    if next < window.len() {
                        total += nll(row, window[next]);
                        count += 1;
                    }
                }
            }
        }
        Ok((count, total / count as f64))
    }
}
