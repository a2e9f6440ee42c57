//! The byte sizes of a checkpoint's parts that the memory planner places: what the
//! planner, a pure function of sizes, is given.

use crate::checkpoint::names::{self, linear_names};
use crate::checkpoint::{ModelConfig, Weights};
use crate::error::Result;
use crate::plan::ModelSizes;
use crate::quant::{substitute_bytes, QuantConfig};

/// Sizes of the parts the planner places, from an opened checkpoint (headers only), the
/// substitutes' format `q` and that of a quantized draft lm_head, `head`, whose rows are
/// `draft_vocab` (`0`: the whole vocabulary).
pub(crate) fn model_sizes(
    c: &ModelConfig,
    w: &Weights,
    q: &QuantConfig,
    head: &QuantConfig,
    draft_vocab: usize,
) -> Result<ModelSizes> {
    let embed = w.info(names::EMBED)?.2 as u64;
    let lm_head = if c.tie_embeddings {
        0
    } else {
        w.info(names::LM_HEAD)?.2 as u64
    };
    let mut layer_linears = Vec::with_capacity(c.n_layers);
    let mut layer_substitutes = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let (mut full, mut sub) = (0, 0);
        for name in linear_names(l) {
            let (_, shape, bytes) = w.info(&name)?;
            if shape.len() != 2 {
                return Err(crate::error::Error::invalid_model(format!(
                    "tensor `{name}` has shape {shape:?}, expected a matrix"
                )));
            }
            full += bytes as u64;
            sub += substitute_bytes(shape[0] as u64, shape[1] as u64, q);
        }
        layer_linears.push(full);
        layer_substitutes.push(sub);
    }
    Ok(ModelSizes {
        embed,
        lm_head,
        vectors: w.vector_bytes() as u64,
        layer_linears,
        layer_substitutes,
        lm_head_substitute: substitute_bytes(
            c.draft_vocab(draft_vocab)? as u64,
            c.hidden as u64,
            head,
        ),
    })
}
