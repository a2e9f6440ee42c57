//! The transformer: configuration, weights, KV cache and the one forward pass.
//!
//! [`Model::forward_at`] takes new tokens with explicit positions and an [`AttnMask`]
//! saying which uncommitted (scratch) slots each may see, on top of everything committed in
//! the [`KvCache`]. Plain decoding is a chain; tree verification is the same call with a
//! tree mask; a draft step is the same call again with [`Pass::Draft`], which runs each
//! offloaded layer's quantized substitutes instead of its full-precision linears and shares
//! everything else (embeddings, norms, biases, lm_head, resident layers, the KV cache). It
//! is written once against [`Backend`].

pub mod config;
pub mod weights;

use std::path::Path;

pub use config::{Arch, ModelConfig};
pub use weights::{DType, HostTensor, Weights};

use crate::backend::TierStats;
use crate::backend::{AttnMask, AttnShape, Backend};
use crate::error::{Error, ErrorKind, Result};
use crate::offload::{plan::linear_names, read_resident, Placement, Residency};
use crate::quant::{QMatrix, QuantConfig};
use std::sync::Mutex;

/// Which weights a forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The target: full-precision weights everywhere.
    Target,
    /// The draft: substitutes in the offloaded layers, shared weights elsewhere.
    Draft,
}

/// The seven linear weights of a decoder layer (full precision, or quantized substitutes
/// of the same shapes).
pub struct Linears<B: Backend> {
    /// `(n_heads * head_dim, hidden)`.
    pub q: B::Weight,
    /// `(n_kv_heads * head_dim, hidden)`.
    pub k: B::Weight,
    /// `(n_kv_heads * head_dim, hidden)`.
    pub v: B::Weight,
    /// `(hidden, n_heads * head_dim)`.
    pub o: B::Weight,
    /// `(intermediate, hidden)`.
    pub gate: B::Weight,
    /// `(intermediate, hidden)`.
    pub up: B::Weight,
    /// `(hidden, intermediate)`.
    pub down: B::Weight,
}

impl<B: Backend> Linears<B> {
    /// From seven weights in the order `[q, k, v, o, gate, up, down]`.
    fn from_vec(w: Vec<B::Weight>) -> Linears<B> {
        let mut it = w.into_iter();
        let mut next = || it.next().expect("seven linears");
        Linears {
            q: next(),
            k: next(),
            v: next(),
            o: next(),
            gate: next(),
            up: next(),
            down: next(),
        }
    }
}

/// The weights of one decoder layer.
pub struct Layer<B: Backend> {
    /// RMSNorm before attention, `(hidden)`.
    pub input_norm: B::Weight,
    /// Biases of q, k, v (Qwen2 only).
    pub qkv_bias: Option<[B::Weight; 3]>,
    /// RMSNorm before the MLP, `(hidden)`.
    pub post_norm: B::Weight,
    /// Full-precision linears when resident; `None` when offloaded (streamed per pass).
    pub full: Option<Linears<B>>,
    /// Quantized substitutes when the draft replaces this layer.
    pub substitutes: Option<Linears<B>>,
}

/// Bytes and count of the substitutes built by [`Model::build_substitutes`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubstituteStats {
    /// Layers that got substitutes.
    pub layers: usize,
    /// Bytes of all substitutes (codes, scales, zeros).
    pub bytes: usize,
    /// Bytes of the full-precision linears they stand in for.
    pub replaced_bytes: usize,
}

/// A loaded model on backend `B`.
pub struct Model<B: Backend> {
    /// Shape and hyper-parameters.
    pub config: ModelConfig,
    /// The backend the weights live on.
    pub backend: B,
    /// `(vocab, hidden)`.
    pub embed: B::Weight,
    /// Decoder layers.
    pub layers: Vec<Layer<B>>,
    /// Final RMSNorm, `(hidden)`.
    pub norm: B::Weight,
    /// `(vocab, hidden)`; `None` when tied to `embed`.
    pub lm_head: Option<B::Weight>,
    /// A quantized copy of lm_head (or of the tied embedding) that only the draft uses,
    /// when [`Model::build_draft_lm_head`] made one.
    pub draft_lm_head: Option<B::Weight>,
    /// RoPE inverse frequencies, `(head_dim / 2)`.
    pub inv_freq: Vec<f32>,
    /// Bytes of all weights in the checkpoint.
    pub weight_bytes: usize,
    /// Bytes of the embedding matrix.
    pub embed_bytes: usize,
    weights: Weights,
    /// The placement, when loaded under a budget.
    pub placement: Option<Placement>,
    streamer: Option<Mutex<B::Tier>>,
}

/// Key/value cache of one sequence: `len()` committed slots, then scratch slots written by
/// the latest forward that are not committed yet.
pub struct KvCache<B: Backend> {
    store: B::Kv,
    committed: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// Number of committed positions.
    pub fn len(&self) -> usize {
        self.committed
    }

    /// Whether nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.committed == 0
    }

    /// Most positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Commits the first `n` scratch slots written by the latest forward.
    pub fn commit(&mut self, n: usize) {
        assert!(self.committed + n <= self.capacity);
        self.committed += n;
    }

    /// Keeps only the scratch slots `keep` (batch indices of the latest forward, ascending)
    /// and commits them, compacted, right after the committed positions.
    pub fn commit_subset(&mut self, backend: &B, keep: &[usize]) -> Result<()> {
        debug_assert!(keep.windows(2).all(|w| w[0] < w[1]));
        let src: Vec<usize> = keep.iter().map(|&j| self.committed + j).collect();
        backend.kv_compact(&mut self.store, &src, self.committed)?;
        self.commit(keep.len());
        Ok(())
    }

    /// Forgets every position from `len` on (scratch slots are always discarded).
    pub fn truncate(&mut self, len: usize) {
        self.committed = self.committed.min(len);
    }
}

fn rope_inv_freq(head_dim: usize, theta: f32) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect()
}

impl<B: Backend> Model<B> {
    /// Loads a Hugging Face model directory onto `backend`, everything resident (weights
    /// stay memory-mapped on the CPU).
    pub fn load(dir: &Path, backend: B) -> Result<Model<B>> {
        Self::load_placed(dir, backend, None)
    }

    /// Loads a model directory with `placement`: resident weights are read once into owned
    /// memory (O_DIRECT), offloaded layers' linears are left on disk and streamed by a
    /// reader thread on every target pass. `None`: everything resident, memory-mapped.
    pub fn load_placed(dir: &Path, backend: B, placement: Option<Placement>) -> Result<Model<B>> {
        let config = ModelConfig::from_dir(dir)?;
        let weights = Weights::open(dir)?;
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
        let (h, q, kv, ff) = (c.hidden, c.q_dim(), c.kv_dim(), c.intermediate);
        // Resident matrices: owned copies under a placement, map views otherwise.
        let up = |name: &str, shape: &[usize]| -> Result<B::Weight> {
            let t = weights.get(name, shape)?;
            if owned && shape.len() == 2 {
                backend.upload(&read_resident(&weights, name)?)
            } else {
                backend.upload(&t)
            }
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = format!("model.layers.{i}");
            let qkv_bias = if c.qkv_bias {
                Some([
                    up(&format!("{p}.self_attn.q_proj.bias"), &[q])?,
                    up(&format!("{p}.self_attn.k_proj.bias"), &[kv])?,
                    up(&format!("{p}.self_attn.v_proj.bias"), &[kv])?,
                ])
            } else {
                None
            };
            let shapes = [[q, h], [kv, h], [kv, h], [h, q], [ff, h], [ff, h], [h, ff]];
            let offloaded = placement
                .as_ref()
                .is_some_and(|p| p.layers[i] == Residency::Offloaded);
            let full = if offloaded {
                for (name, shape) in linear_names(i).iter().zip(&shapes) {
                    weights.get(name, shape)?; // checked now, streamed later
                }
                None
            } else {
                let w = linear_names(i)
                    .iter()
                    .zip(&shapes)
                    .map(|(name, shape)| up(name, shape))
                    .collect::<Result<Vec<_>>>()?;
                Some(Linears::from_vec(w))
            };
            layers.push(Layer {
                input_norm: up(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv_bias,
                post_norm: up(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                full,
                substitutes: None,
            });
        }
        let lm_head = if c.tie_embeddings {
            None
        } else if weights.contains("lm_head.weight") {
            Some(up("lm_head.weight", &[c.vocab, h])?)
        } else {
            return Err(Error::invalid_model(format!(
                "{}: missing tensor `lm_head.weight` (config says tie_word_embeddings is false)",
                dir.display()
            )));
        };
        // The embedding is read a row per token: it stays mapped unless it is lm_head too.
        let embed_t = weights.get("model.embed_tokens.weight", &[c.vocab, h])?;
        let embed = if c.tie_embeddings {
            up("model.embed_tokens.weight", &[c.vocab, h])?
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
            norm: up("model.norm.weight", &[h])?,
            lm_head,
            draft_lm_head: None,
            layers,
            inv_freq: rope_inv_freq(c.head_dim, c.rope_theta),
            weight_bytes: weights.total_bytes(),
            config,
            backend,
            weights,
            placement,
            streamer,
        })
    }

    /// The checkpoint (headers and mapped views).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Streaming counters when layers are offloaded.
    pub fn stream_stats(&self) -> Option<TierStats> {
        self.streamer.as_ref().map(|s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            self.backend.tier_stats(&s)
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
            let mut it = q.into_iter().map(|m| self.backend.upload_quant(m));
            let mut next = || it.next().unwrap();
            progress(built.len() + 1)?;
            built.push((
                li,
                Linears {
                    q: next()?,
                    k: next()?,
                    v: next()?,
                    o: next()?,
                    gate: next()?,
                    up: next()?,
                    down: next()?,
                },
            ));
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

    /// Quantizes lm_head (the embedding when tied) with `qc` into the draft's own output
    /// head (`None` removes it). Returns its bytes.
    pub fn build_draft_lm_head(&mut self, qc: Option<&QuantConfig>) -> Result<usize> {
        let Some(qc) = qc else {
            self.draft_lm_head = None;
            return Ok(0);
        };
        qc.validate()?;
        let name = if self.config.tie_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let t = self.weights.get_any(name)?;
        let m = QMatrix::quantize_tensor(&t, qc)
            .map_err(|e| Error::new(e.kind(), format!("draft lm_head from `{name}`: {e}")))?;
        let bytes = m.bytes();
        self.draft_lm_head = Some(self.backend.upload_quant(m)?);
        Ok(bytes)
    }

    /// Whether any layer has substitutes (a draft exists).
    pub fn has_draft(&self) -> bool {
        self.layers.iter().any(|l| l.substitutes.is_some())
    }

    /// Weight bytes one decode step reads: everything but the embedding matrix (only one
    /// row of it is read), unless lm_head is tied to it.
    pub fn bytes_read_per_token(&self) -> usize {
        if self.lm_head.is_some() {
            self.weight_bytes - self.embed_bytes
        } else {
            self.weight_bytes
        }
    }

    /// An empty KV cache for up to `capacity` positions (committed plus scratch).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache<B>> {
        let c = &self.config;
        Ok(KvCache {
            store: self.backend.kv_new(c.n_layers, c.kv_dim(), capacity)?,
            committed: 0,
            capacity,
        })
    }

    /// Checks that every id is inside the vocabulary.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
            return Err(Error::new(
                ErrorKind::InvalidToken,
                format!(
                    "token id {bad} is out of range: the vocabulary has {} tokens (ids 0..={})",
                    self.config.vocab,
                    self.config.vocab - 1
                ),
            ));
        }
        Ok(())
    }

    /// The target forward of a batch written at scratch offset 0; see [`Model::forward_at`].
    pub fn forward(
        &self,
        cache: &mut KvCache<B>,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        self.forward_at(cache, Pass::Target, 0, tokens, positions, mask, logit_rows)
    }

    /// Runs `tokens` (at `positions`, attending as `mask` says) through the `pass` weights
    /// on top of the committed cache, writing their K/V into the scratch slots
    /// `first..first + tokens.len()` (uncommitted), and returns the logits of the batch rows
    /// in `logit_rows`, `(logit_rows.len(), vocab)` row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_at(
        &self,
        cache: &mut KvCache<B>,
        pass: Pass,
        first: usize,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
        logit_rows: &[usize],
    ) -> Result<Vec<f32>> {
        if logit_rows.iter().any(|&r| r >= tokens.len()) {
            return Err(Error::internal("forward: a logit row outside the batch"));
        }
        let x = self.forward_hidden(cache, pass, first, tokens, positions, mask)?;
        self.logits(pass, &x, logit_rows)
    }

    /// [`Model::forward_at`] up to the last decoder layer: the residual stream of the
    /// batch, `(tokens.len(), hidden)`, for [`Model::logits`] to finish.
    pub fn forward_hidden(
        &self,
        cache: &mut KvCache<B>,
        pass: Pass,
        first: usize,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
    ) -> Result<B::Act> {
        let c = &self.config;
        let n = tokens.len();
        if positions.len() != n || mask.len() != n {
            return Err(Error::internal(
                "forward: tokens, positions and mask disagree",
            ));
        }
        mask.validate(first)?;
        self.check_tokens(tokens)?;
        if cache.committed + first + n > cache.capacity {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!(
                    "{} committed + {} new tokens exceed the KV cache capacity of {}",
                    cache.committed,
                    first + n,
                    cache.capacity
                ),
            ));
        }
        let be = &self.backend;
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        // Residual stream.
        let mut x = be.act(n, c.hidden)?;
        be.embed(&self.embed, tokens, &mut x)?;
        let mut h = be.act(n, c.hidden)?;
        let mut q = be.act(n, c.q_dim())?;
        let mut k = be.act(n, c.kv_dim())?;
        let mut v = be.act(n, c.kv_dim())?;
        let mut attn = be.act(n, c.q_dim())?;
        let mut gate = be.act(n, c.intermediate)?;
        let mut up = be.act(n, c.intermediate)?;
        // A target pass streams the offloaded layers in order (one pass at a time).
        let mut stream = match (pass, &self.streamer) {
            (Pass::Target, Some(s)) => {
                let mut g = s.lock().unwrap_or_else(|e| e.into_inner());
                be.tier_begin(&mut g)?; // a pass that failed midway left the stream mid-model
                Some(g)
            }
            _ => None,
        };
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block: norm, q/k/v projections, rotary, cache write, attention, o.
            be.rms_norm(&x, &l.input_norm, c.rms_eps, &mut h)?;
            // The linears this pass runs: the draft's substitutes, the resident weights,
            // or this layer's weights streamed into a staging buffer.
            let mut streamed = None;
            let lin: &Linears<B> = match (pass, &l.full, &l.substitutes) {
                (Pass::Draft, _, Some(sub)) => sub,
                (_, Some(full), _) => full,
                (Pass::Target, None, _) => {
                    let tier = stream
                        .as_mut()
                        .ok_or_else(|| Error::internal("an offloaded layer without a streamer"))?;
                    let (ticket, w) = be.tier_fetch(tier, li)?;
                    &streamed.insert((ticket, Linears::from_vec(w))).1
                }
                (Pass::Draft, None, None) => {
                    return Err(Error::internal(format!(
                        "layer {li} is offloaded but has no substitute"
                    )))
                }
            };
            let (wq, wk, wv, wo, wg, wu, wd) = (
                &lin.q, &lin.k, &lin.v, &lin.o, &lin.gate, &lin.up, &lin.down,
            );
            let bias = l.qkv_bias.as_ref();
            be.linear(&h, wq, bias.map(|b| &b[0]), &mut q)?;
            be.linear(&h, wk, bias.map(|b| &b[1]), &mut k)?;
            be.linear(&h, wv, bias.map(|b| &b[2]), &mut v)?;
            be.rope(&mut q, positions, &self.inv_freq)?;
            be.rope(&mut k, positions, &self.inv_freq)?;
            be.kv_write(&mut cache.store, li, cache.committed + first, &k, &v)?;
            be.attention(
                &q,
                &cache.store,
                li,
                cache.committed,
                mask,
                shape,
                &mut attn,
            )?;
            be.linear(&attn, wo, None, &mut h)?;
            be.add(&mut x, &h)?;
            // MLP block: norm, gate/up, silu(gate) * up, down.
            be.rms_norm(&x, &l.post_norm, c.rms_eps, &mut h)?;
            be.linear(&h, wg, None, &mut gate)?;
            be.linear(&h, wu, None, &mut up)?;
            be.silu_mul(&mut gate, &up)?;
            be.linear(&gate, wd, None, &mut h)?;
            be.add(&mut x, &h)?;
            if let (Some((ticket, w)), Some(stream)) = (streamed, stream.as_mut()) {
                drop(w);
                be.tier_release(stream, ticket)?;
            }
        }
        Ok(x)
    }

    /// The `pass`'s logits of rows `logit_rows` of a batch's residual stream `x` (from
    /// [`Model::forward_hidden`]): final norm and lm_head, `(logit_rows.len(), vocab)`
    /// row-major. A row's logits do not depend on which other rows are asked for. The
    /// rows must be inside the batch (the callers check; a backend may panic otherwise).
    pub(crate) fn logits(&self, pass: Pass, x: &B::Act, logit_rows: &[usize]) -> Result<Vec<f32>> {
        let (c, be) = (&self.config, &self.backend);
        let mut sel = be.act(logit_rows.len(), c.hidden)?;
        be.gather_rows(x, logit_rows, &mut sel)?;
        let mut normed = be.act(logit_rows.len(), c.hidden)?;
        be.rms_norm(&sel, &self.norm, c.rms_eps, &mut normed)?;
        let mut logits = be.act(logit_rows.len(), c.vocab)?;
        let head = match (pass, &self.draft_lm_head) {
            (Pass::Draft, Some(q)) => q,
            _ => self.lm_head.as_ref().unwrap_or(&self.embed),
        };
        be.linear(&normed, head, None, &mut logits)?;
        be.to_host(&logits)
    }
}
