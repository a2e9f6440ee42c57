//! Loading a checkpoint onto a backend under a placement, and building the draft: the
//! quantized substitutes of chosen layers and, optionally, the draft's own lm_head.

use std::path::Path;
use std::sync::Mutex;

use super::{Layer, Linears, Model, SubstituteStats};
use crate::backend::{Backend, KvDtype};
use crate::checkpoint::direct::read_resident;
use crate::checkpoint::names::{self, linear_names, Linear};
use crate::checkpoint::{HostTensor, ModelConfig, Weights};
use crate::error::{Error, Result};
use crate::plan::{Placement, Residency};
use crate::quant::{QMatrix, QuantConfig};

impl<B: Backend> Model<B> {
    /// Loads a checkpoint (a Hugging Face model directory or a GGUF file) onto
    /// `backend`, everything resident (weights stay memory-mapped on the CPU).
    pub fn load(path: &Path, backend: B) -> Result<Model<B>> {
        Self::load_placed(path, backend, None)
    }

    /// Loads a model directory with `placement`: resident weights are read once into owned
    /// memory (O_DIRECT), offloaded layers' linears are left on disk and streamed by a
    /// reader thread on every target pass. `None`: everything resident, memory-mapped.
    pub fn load_placed(path: &Path, backend: B, placement: Option<Placement>) -> Result<Model<B>> {
        let config = ModelConfig::load(path)?;
        let weights = Weights::open(path)?;
        let c = &config;
        if let Some(p) = &placement {
            if p.layers.len() != c.n_layers {
                return Err(Error::invalid_argument(format!(
                    "the placement covers {} layers, the model has {}",
                    p.layers.len(),
                    c.n_layers
                )));
            }
        }
        let owned = placement.is_some();
        let (h, q, kv) = (c.hidden, c.q_dim(), c.kv_dim());
        // Resident matrices: owned copies under a placement, map views otherwise.
        let up = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let t = weights.get(name, shape)?;
            if owned && shape.len() == 2 {
                backend.upload(&read_resident(&weights, name)?)
            } else {
                backend.upload(&t)
            }
        };
        // RMSNorm weights, with the checkpoint's offset added (Gemma's `1 + w`, in f32
        // as transformers adds it).
        let norm = |name: &str, len: usize| -> Result<B::Weight> {
            let t = weights.get(name, &[len])?;
            if c.norm_weight_offset == 0.0 {
                return backend.upload(&t);
            }
            let w: Vec<f32> = t
                .to_f32_vec()
                .iter()
                .map(|w| w + c.norm_weight_offset)
                .collect();
            backend.upload(&HostTensor::from_f32(name, vec![len], &w))
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let qkv_bias = if c.qkv_bias {
                let [bq, bk, bv] = names::qkv_bias(i);
                Some([up(&bq, &[q])?, up(&bk, &[kv])?, up(&bv, &[kv])?])
            } else {
                None
            };
            let qk_norm = if c.qk_norm {
                let [nq, nk] = names::qk_norm(i);
                Some([norm(&nq, c.head_dim)?, norm(&nk, c.head_dim)?])
            } else {
                None
            };
            let shapes = Linear::ALL.map(|k| k.shape(c));
            let offloaded = placement
                .as_ref()
                .is_some_and(|p| p.layers[i] == Residency::Offloaded);
            let full = if offloaded {
                for (name, shape) in linear_names(i).iter().zip(&shapes) {
                    weights.check(name, shape)?; // checked now, streamed later
                }
                None
            } else {
                let w = linear_names(i)
                    .iter()
                    .zip(&shapes)
                    .map(|(name, shape)| up(name, shape))
                    .collect::<Result<Vec<_>>>()?;
                Some(Linears::from_vec(w)?)
            };
            let sandwich = if c.sandwich_norms {
                let [a, m] = names::sandwich_norms(i);
                Some([norm(&a, h)?, norm(&m, h)?])
            } else {
                None
            };
            layers.push(Layer {
                input_norm: norm(&names::input_norm(i), h)?,
                qkv_bias,
                qk_norm,
                post_norm: norm(&names::mlp_norm(i, c), h)?,
                sandwich,
                full,
                substitutes: None,
            });
        }
        let lm_head = if c.tie_embeddings {
            None
        } else if weights.contains(names::LM_HEAD) {
            Some(up(names::LM_HEAD, &[c.vocab, h])?)
        } else {
            return Err(Error::invalid_model(format!(
                "{}: missing tensor `lm_head.weight` (config says tie_word_embeddings is false)",
                path.display()
            )));
        };
        // The embedding is read a row per token: it stays mapped unless it is lm_head too.
        let embed_t = weights.get(names::EMBED, &[c.vocab, h])?;
        let embed = if c.tie_embeddings {
            up(names::EMBED, &[c.vocab, h])?
        } else {
            backend.host_matrix(&embed_t)?
        };
        let streamer = match &placement {
            Some(p) if !p.offloaded().is_empty() => Some(Mutex::new(backend.tier_new(
                &weights,
                &p.offloaded(),
                p.staging_buffers,
            )?)),
            _ => None,
        };
        Ok(Model {
            embed_bytes: embed_t.bytes().len(),
            embed,
            norm: norm(names::FINAL_NORM, h)?,
            lm_head,
            draft_lm_head: None,
            draft_vocab: c.vocab,
            draft_shortlist: 0,
            kv_dtype: KvDtype::F32,
            layers,
            inv_freq: c.rope_inv_freq(),
            inv_freq_local: c.rope_inv_freq_local(),
            weight_bytes: weights.total_bytes(),
            config,
            backend,
            weights,
            placement,
            streamer,
        })
    }

    /// Quantizes the seven linears of each layer in `layers` (the offloaded ones) into
    /// substitutes for the draft; other layers lose theirs. `progress` is told how many
    /// layers are done and may stop the work with an error (nothing changes then).
    /// Returns sizes.
    pub fn build_substitutes(
        &mut self,
        layers: &[usize],
        qc: &QuantConfig,
        progress: &mut dyn FnMut(usize) -> Result<()>,
    ) -> Result<SubstituteStats> {
        qc.validate()?;
        if let Some(&bad) = layers.iter().find(|&&l| l >= self.layers.len()) {
            return Err(Error::invalid_argument(format!(
                "layer {bad} does not exist (the model has {})",
                self.layers.len()
            )));
        }
        let mut stats = SubstituteStats::default();
        let mut built = Vec::with_capacity(layers.len());
        for &li in layers {
            let mut q: Vec<QMatrix> = Vec::with_capacity(7);
            for name in linear_names(li) {
                let t = self.weights.get_any(&name)?;
                let m = QMatrix::quantize_tensor(&t, qc)
                    .map_err(|e| Error::new(e.kind(), format!("substitute of `{name}`: {e}")))?;
                stats.bytes += m.bytes();
                stats.replaced_bytes += t.bytes().len();
                q.push(m);
            }
            let uploaded = q
                .into_iter()
                .map(|m| self.backend.upload_quant(m))
                .collect::<Result<Vec<_>>>()?;
            progress(built.len() + 1)?;
            built.push((li, Linears::from_vec(uploaded)?));
        }
        // Only now that every substitute exists: swap them in (no half-built draft).
        for l in self.layers.iter_mut() {
            l.substitutes = None;
        }
        stats.layers = built.len();
        for (li, s) in built {
            self.layers[li].substitutes = Some(s);
        }
        Ok(stats)
    }

    /// The draft's own output head over token ids below `vocab` (`0`: the whole
    /// vocabulary): lm_head's (the tied embedding's) first `vocab` rows, quantized with
    /// `qc` when given, otherwise a view of the target's head (no copy; none at all for the
    /// whole vocabulary unquantized: the draft then shares the target's). With a
    /// `shortlist` (needs `qc`), the quantized head only ranks the vocabulary: the
    /// `shortlist` tokens a draft row ranks first get the target head's logits in the
    /// draft's. Returns the bytes it adds. Nothing changes on error.
    pub fn build_draft_lm_head(
        &mut self,
        qc: Option<&QuantConfig>,
        vocab: usize,
        shortlist: usize,
    ) -> Result<usize> {
        let vocab = self.config.draft_vocab(vocab)?;
        if shortlist > 0 && qc.is_none() {
            return Err(Error::invalid_argument(
                "a draft shortlist is ranked by the draft's own quantized lm_head: set quantize_lm_head too",
            ));
        }
        if shortlist > vocab {
            return Err(Error::invalid_argument(format!(
                "a draft shortlist of {shortlist} tokens exceeds the draft's vocabulary of {vocab}"
            )));
        }
        let (head, bytes) = match qc {
            Some(qc) => {
                qc.validate()?;
                let name = if self.config.tie_embeddings {
                    names::EMBED
                } else {
                    names::LM_HEAD
                };
                let t = self.weights.get_any(name)?.first_rows(vocab);
                let m = QMatrix::quantize_tensor(&t, qc).map_err(|e| {
                    Error::new(e.kind(), format!("draft lm_head from `{name}`: {e}"))
                })?;
                let bytes = m.bytes();
                (Some(self.backend.upload_quant(m)?), bytes)
            }
            None if vocab < self.config.vocab => {
                let target = self.lm_head.as_ref().unwrap_or(&self.embed);
                (Some(self.backend.weight_rows(target, vocab)?), 0)
            }
            None => (None, 0),
        };
        self.draft_lm_head = head;
        self.draft_vocab = vocab;
        self.draft_shortlist = shortlist;
        Ok(bytes)
    }
}
