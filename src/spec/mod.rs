//! Speculation: the token tree and its growth, the draft loop, and lossless verification.
//! Pure logic, no device code: the engine runs the forwards (as closures) and hands the
//! logits in.
//!
//! - `tree.rs`: [`Tree`] and one level of growth (global top-k by path probability);
//! - `draft.rs`: the draft loop, its adaptive stop and the default tree for a placement;
//! - `verify.rs`: the acceptance walk.

pub(crate) mod draft;
mod tree;
pub mod tune;
mod verify;

pub use tree::Tree;
pub use verify::{accept_from, NodeLogits, Walk};

use crate::error::{Error, Result};

/// Shape of the draft tree.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct TreeParams {
    /// Nodes kept per depth step (the frontier width, `k`).
    pub width: usize,
    /// Draft steps (tree depth below the root).
    pub depth: usize,
    /// Most nodes in the tree, root included (the verification batch).
    pub max_tokens: usize,
    /// Draft softmax temperature used to rank paths.
    pub draft_temperature: f32,
    /// Stop growing early when one more draft step costs more than it can be expected
    /// to return: the draft's probability mass on the frontier paths at the draft
    /// temperature (an estimate of the extra tokens the next level can add) times the
    /// sequence's measured time per token, against the measured time of a draft step.
    /// `depth` stays the maximum.
    pub adaptive: bool,
    /// Choose each iteration's depth, `0` (a plain step) included, to maximise expected
    /// tokens per second: from the engine's measured costs (a draft step at `width`, a
    /// target pass over the tree's tokens: [`Engine::tree_costs`], measured once, at the
    /// first such step) and the sequence's acceptance by depth so far (`spec::tune`).
    /// `depth` stays the maximum. Steps only ([`Sequence::step`]); a host-sampled
    /// iteration drafts `depth` levels as given.
    ///
    /// [`Engine::tree_costs`]: crate::Engine::tree_costs
    /// [`Sequence::step`]: crate::Sequence::step
    pub auto_depth: bool,
}

impl Default for TreeParams {
    /// Tuned on the CPU with the whole model resident and every decoder layer
    /// substituted (docs/BENCHMARKS.md): there the draft costs about half a target pass,
    /// so a narrow tree pays best. The paper's offloaded GPU setting uses width 6, depth 48.
    fn default() -> Self {
        TreeParams {
            width: 1,
            depth: 8,
            max_tokens: 64,
            draft_temperature: 0.2,
            adaptive: false,
            auto_depth: false,
        }
    }
}

impl TreeParams {
    /// With frontier width `width`.
    pub fn with_width(self, width: usize) -> Self {
        TreeParams { width, ..self }
    }

    /// With `depth` draft steps.
    pub fn with_depth(self, depth: usize) -> Self {
        TreeParams { depth, ..self }
    }

    /// With at most `max_tokens` nodes, root included.
    pub fn with_max_tokens(self, max_tokens: usize) -> Self {
        TreeParams { max_tokens, ..self }
    }

    /// With the draft softmax temperature `t`.
    pub fn with_draft_temperature(self, t: f32) -> Self {
        TreeParams {
            draft_temperature: t,
            ..self
        }
    }

    /// With the adaptive stop on or off.
    pub fn with_adaptive(self, adaptive: bool) -> Self {
        TreeParams { adaptive, ..self }
    }

    /// With the depth chosen by measured cost on or off ([`TreeParams::auto_depth`]).
    pub fn with_auto_depth(self, auto_depth: bool) -> Self {
        TreeParams { auto_depth, ..self }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.width == 0 {
            return Err(Error::invalid_argument("tree width must be at least 1"));
        }
        if self.depth == 0 {
            return Err(Error::invalid_argument("tree depth must be at least 1"));
        }
        if self.max_tokens < 2 {
            return Err(Error::invalid_argument(format!(
                "tree max tokens must be at least 2 (the root and one draft token), got {}",
                self.max_tokens
            )));
        }
        if !(self.draft_temperature.is_finite() && self.draft_temperature > 0.0) {
            return Err(Error::invalid_argument(format!(
                "draft temperature must be a positive number, got {}",
                self.draft_temperature
            )));
        }
        Ok(())
    }
}

/// Per-sequence speculation statistics.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct SpecStats {
    /// Steps (one target pass each, after the prompt).
    pub iterations: usize,
    /// Tokens emitted by those steps.
    pub generated: usize,
    /// Draft tokens accepted (emitted tokens minus bonus tokens).
    pub accepted: usize,
    /// `accepted_by_depth[d]`: steps that accepted at least `d + 1` draft tokens.
    pub accepted_by_depth: Vec<usize>,
    /// Draft forwards run (those during target passes included).
    pub draft_steps: usize,
    /// Draft forwards run while target passes waited for streamed layers, deepening the
    /// tree under verification (their time is part of `verify_s`).
    pub overlapped_steps: usize,
    /// Steps whose tree started from nodes drafted during the previous step's pass (the
    /// target's token after the accepted path was one of them).
    pub reused_trees: usize,
    /// Seconds spent drafting before target passes.
    pub draft_s: f64,
    /// Seconds spent in target passes (verification, or the plain step's forward).
    pub verify_s: f64,
}

impl SpecStats {
    /// Mean tokens emitted per target pass (accepted draft tokens + 1): tau.
    pub fn tau(&self) -> f64 {
        if self.iterations == 0 {
            0.0
        } else {
            self.generated as f64 / self.iterations as f64
        }
    }

    /// Records one step.
    pub fn record(&mut self, emitted: usize, accepted: usize) {
        self.iterations += 1;
        self.generated += emitted;
        self.accepted += accepted;
        if self.accepted_by_depth.len() < accepted {
            self.accepted_by_depth.resize(accepted, 0);
        }
        for d in self.accepted_by_depth.iter_mut().take(accepted) {
            *d += 1;
        }
    }
}
