//! The transformer: its weights on a backend and the one forward pass.
//!
//! [`Model::forward_at`] takes new tokens with explicit positions and an [`AttnMask`]
//! saying which uncommitted (scratch) slots each may see, on top of everything committed in
//! the [`KvCache`]. Plain decoding is a chain; tree verification is the same call with a
//! tree mask; a draft step is the same call again with [`Pass::Draft`], which runs each
//! substituted layer's quantized substitutes instead of its full-precision linears and
//! shares everything else (embeddings, norms, biases, lm_head, resident layers, the KV
//! cache). It is written once against [`Backend`].
//!
//! Loading (`load.rs`) puts the checkpoint's weights on the backend under a placement and
//! builds the draft's substitutes; `sizes.rs` gives the planner the checkpoint's sizes.

mod kv;
mod load;
mod sizes;

use std::ops::Index;
use std::sync::Mutex;

pub use kv::KvCache;
pub(crate) use sizes::model_sizes;

use crate::backend::TierStats;
use crate::backend::{AttnMask, AttnShape, Backend, KvDtype};
use crate::checkpoint::{Activation, Linear, ModelConfig, Weights};
use crate::error::{Error, ErrorKind, Result};
use crate::plan::Placement;
use crate::sample::top_logits;
use crate::util::AbortHandle;

/// One sequence's part of a batched pass ([`Model::forward_hidden_batch`]): its cache, the
/// scratch offset its K/V is written at, and its tokens, positions and mask as
/// [`Model::forward_at`] takes them.
pub struct Segment<'a, B: Backend> {
    pub cache: &'a mut KvCache<B>,
    pub first: usize,
    pub tokens: &'a [u32],
    pub positions: &'a [usize],
    pub mask: &'a AttnMask,
}

/// What [`Model::prepare`] reads of a segment (its cache's lengths, not the cache).
struct SegShape<'a> {
    tokens: &'a [u32],
    positions: &'a [usize],
    mask: &'a AttnMask,
    first: usize,
    committed: usize,
    capacity: usize,
}

impl<B: Backend> Segment<'_, B> {
    fn shape(&self) -> SegShape<'_> {
        SegShape {
            tokens: self.tokens,
            positions: self.positions,
            mask: self.mask,
            first: self.first,
            committed: self.cache.committed,
            capacity: self.cache.capacity,
        }
    }
}

/// A pass's buffers between its layers: the residual stream, the activations a layer
/// reuses, and each segment's windowed masks.
struct Run<B: Backend> {
    positions: Vec<usize>,
    x: B::Act,
    h: B::Act,
    /// The sandwich norms' output (Gemma 3).
    hn: Option<B::Act>,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    attn: B::Act,
    gate: B::Act,
    up: B::Act,
    windowed: Vec<Vec<(usize, AttnMask)>>,
}

/// Draft forwards a target pass runs in its waits ([`Model::forward_hidden_drafting`]).
pub(crate) trait DraftWork {
    /// The next forward: its first cache slot, tokens, positions and mask
    /// ([`Model::draft_begin`]'s); `None` once there is nothing left to draft.
    fn next(&mut self) -> Option<(usize, Vec<u32>, Vec<usize>, AttnMask)>;
    /// The logits of every row of the forward `next` gave last.
    fn done(&mut self, logits: Vec<f32>);
}

/// A draft forward run a layer at a time ([`Model::draft_begin`]).
pub(crate) struct DraftRun<B: Backend> {
    run: Run<B>,
    first: usize,
    tokens: Vec<u32>,
    positions: Vec<usize>,
    mask: AttnMask,
    /// The next layer to run.
    next: usize,
    /// After the last layer: the normed rows, the logits so far and the next head row.
    head: Option<(B::Act, Vec<f32>, usize)>,
}

/// Rows of the output head one step of [`Model::draft_advance`] multiplies (~15 MB of
/// Qwen2.5-0.5B's f16 head): a whole head's product (~270 MB) would hold a target pass
/// up for as long as it takes when its streamed layer arrives meanwhile.
const HEAD_ROWS_PER_STEP: usize = 8192;

/// Work a target pass does while it waits for a streamed layer
/// ([`Model::forward_hidden`]): `false` once there is none left.
pub type Idle<'a, B> = dyn FnMut(&mut KvCache<B>) -> Result<bool> + 'a;

/// Which weights a forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The target: full-precision weights everywhere.
    Target,
    /// The draft: substitutes where a layer has them, shared weights elsewhere.
    Draft,
}

/// The seven linear weights of a decoder layer (full precision, or quantized substitutes
/// of the same shapes), indexed by [`Linear`].
pub(crate) struct Linears<W>([W; 7]);

impl<W> Linears<W> {
    /// From seven weights in [`Linear::ALL`] order.
    fn from_vec(w: Vec<W>) -> Result<Linears<W>> {
        let n = w.len();
        w.try_into()
            .map(Linears)
            .map_err(|_| Error::internal(format!("a layer has 7 linears, got {n}")))
    }
}

impl<W> Index<Linear> for Linears<W> {
    type Output = W;
    fn index(&self, k: Linear) -> &W {
        &self.0[k as usize]
    }
}

/// The weights of one decoder layer.
pub(crate) struct Layer<B: Backend> {
    /// RMSNorm before attention, `(hidden)`.
    input_norm: B::Weight,
    /// Biases of q, k, v (Qwen2 only).
    qkv_bias: Option<[B::Weight; 3]>,
    /// Per-head RMSNorm weights of q and k, `(head_dim)` each (Qwen3 only).
    qk_norm: Option<[B::Weight; 2]>,
    /// RMSNorm before the MLP, `(hidden)`.
    post_norm: B::Weight,
    /// Gemma 3's RMSNorms of the attention output and of the MLP output, `(hidden)`.
    sandwich: Option<[B::Weight; 2]>,
    /// Full-precision linears when resident; `None` when offloaded (streamed per pass).
    full: Option<Linears<B::Weight>>,
    /// Quantized substitutes when the draft replaces this layer.
    substitutes: Option<Linears<B::Weight>>,
}

/// Bytes and count of the substitutes the draft was built with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubstituteStats {
    /// Layers that got substitutes.
    pub layers: usize,
    /// Bytes of all substitutes (codes, scales, zeros).
    pub bytes: usize,
    /// Bytes of the full-precision linears they stand in for.
    pub replaced_bytes: usize,
    /// Bytes of the draft's own quantized lm_head (`0`: it shares the target's).
    pub lm_head_bytes: usize,
}

/// A loaded model on backend `B`: the target, and the draft once substitutes are built.
pub struct Model<B: Backend> {
    /// Shape and hyper-parameters.
    config: ModelConfig,
    /// The backend the weights live on.
    backend: B,
    /// `(vocab, hidden)`.
    embed: B::Weight,
    /// Decoder layers.
    layers: Vec<Layer<B>>,
    /// Final RMSNorm, `(hidden)`.
    norm: B::Weight,
    /// `(vocab, hidden)`; `None` when tied to `embed`.
    lm_head: Option<B::Weight>,
    /// The draft's own output head, when [`Model::build_draft_lm_head`] made one: a
    /// quantized copy of lm_head (or of the tied embedding), or a view of its first
    /// `draft_vocab` rows.
    draft_lm_head: Option<B::Weight>,
    /// Tokens the draft can propose: ids below this (the rows of `draft_lm_head`; the
    /// whole vocabulary without one).
    draft_vocab: usize,
    /// Tokens per draft row whose logits come from the target's head (`0`: none): the
    /// draft's quantized head then only ranks the vocabulary ([`Model::logits`]).
    draft_shortlist: usize,
    /// Element type of the KV caches [`Model::new_cache`] makes (f32 unless set).
    kv_dtype: KvDtype,
    /// RoPE inverse frequencies, `(head_dim / 2)`.
    inv_freq: Vec<f32>,
    /// Those of the sliding-window layers when they have their own base (Gemma 3).
    inv_freq_local: Option<Vec<f32>>,
    /// Bytes of all weights in the checkpoint.
    weight_bytes: usize,
    /// Bytes of the embedding matrix.
    embed_bytes: usize,
    weights: Weights,
    /// The placement, when loaded under a budget.
    placement: Option<Placement>,
    /// The slow tier of the offloaded layers (one target pass streams at a time).
    streamer: Option<Mutex<B::Tier>>,
}

impl<B: Backend> Model<B> {
    /// Shape and hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Columns of the draft's logits: it proposes token ids below this.
    pub fn draft_vocab(&self) -> usize {
        self.draft_vocab
    }

    /// Tokens per draft row whose logits come from the target's head (`0`: none).
    pub fn draft_shortlist(&self) -> usize {
        self.draft_shortlist
    }

    /// Element type of the KV caches [`Model::new_cache`] makes.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Makes later caches hold `dtype` values (caches made before keep theirs).
    pub fn set_kv_dtype(&mut self, dtype: KvDtype) {
        self.kv_dtype = dtype;
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The placement, when loaded under a budget (`None`: everything resident).
    pub fn placement(&self) -> Option<&Placement> {
        self.placement.as_ref()
    }

    /// Streaming counters when layers are offloaded.
    pub fn stream_stats(&self) -> Option<TierStats> {
        self.streamer.as_ref().map(|s| {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            self.backend.tier_stats(&s)
        })
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

    /// An empty KV cache for up to `capacity` positions (committed plus scratch), of
    /// [`Model::kv_dtype`] values.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache<B>> {
        self.new_cache_of(capacity, self.kv_dtype)
    }

    /// An empty KV cache for up to `capacity` positions of `dtype` values.
    pub fn new_cache_of(&self, capacity: usize, dtype: KvDtype) -> Result<KvCache<B>> {
        let c = &self.config;
        Ok(KvCache {
            store: self
                .backend
                .kv_new(c.n_layers, c.n_kv_heads, c.head_dim, capacity, dtype)?,
            committed: 0,
            capacity,
            abort: AbortHandle::default(),
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
        let mut segs = [Segment {
            cache,
            first,
            tokens,
            positions,
            mask,
        }];
        // No logits (a prompt's prefill): the last layer only writes its K/V.
        let x = self.layers(pass, &mut segs, !logit_rows.is_empty())?;
        self.logits(pass, &x, logit_rows)
    }

    /// [`Model::forward_at`] up to the last decoder layer: the residual stream of the
    /// batch, `(tokens.len(), hidden)`, for `Model::logits` to finish. With `idle`, a
    /// target pass that waits for a streamed layer calls it with the cache (the pass
    /// writes only its own scratch slots between calls) until the layer is there or `idle`
    /// returns `false` (nothing left to do). A call should be short (one draft layer):
    /// the pass goes on only when it returns. An error from `idle` fails the pass.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_hidden(
        &self,
        cache: &mut KvCache<B>,
        pass: Pass,
        first: usize,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
        idle: Option<&mut Idle<'_, B>>,
    ) -> Result<B::Act> {
        let mut segs = [Segment {
            cache,
            first,
            tokens,
            positions,
            mask,
        }];
        self.layers_idle(pass, &mut segs, true, idle)
    }

    /// [`Model::forward_hidden`] of a target pass that runs `work`'s draft forwards in its
    /// waits for streamed layers, one layer (or part of the output head) a wait
    /// ([`Model::draft_advance`]); a forward the pass's end interrupts is dropped. Returns
    /// the residual stream and the number of draft forwards finished.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_hidden_drafting(
        &self,
        cache: &mut KvCache<B>,
        first: usize,
        tokens: &[u32],
        positions: &[usize],
        mask: &AttnMask,
        work: &mut dyn DraftWork,
    ) -> Result<(B::Act, usize)> {
        let mut run: Option<DraftRun<B>> = None;
        let mut steps = 0;
        let mut idle = |c: &mut KvCache<B>| -> Result<bool> {
            let r = match &mut run {
                Some(r) => r,
                None => {
                    let Some((first, tokens, positions, mask)) = work.next() else {
                        return Ok(false);
                    };
                    run.insert(self.draft_begin(c, first, tokens, positions, mask)?)
                }
            };
            if let Some(logits) = self.draft_advance(r, c)? {
                run = None;
                steps += 1;
                work.done(logits);
            }
            Ok(true)
        };
        let idle = Some(&mut idle as &mut Idle<'_, B>);
        let x = self.forward_hidden(cache, Pass::Target, first, tokens, positions, mask, idle)?;
        Ok((x, steps))
    }

    /// [`Model::forward_hidden`] of several sequences in one pass: their tokens go through
    /// every linear together (an offloaded layer is streamed once for all of them), each
    /// segment's attention reads and writes only its own cache. The result has the
    /// segments' rows one after the other. A row's values are the bits the segment would
    /// give alone (every operation is row-wise or per segment). An error leaves every
    /// cache's committed positions as they were. With several segments an abort request
    /// is left in place (the error is `Aborted` for the batch): the caller sees which
    /// sequences made one.
    pub fn forward_hidden_batch(&self, pass: Pass, segs: &mut [Segment<'_, B>]) -> Result<B::Act> {
        self.layers(pass, segs, true)
    }

    /// [`Model::forward_hidden_batch`]; without `hidden` the caller wants the K/V alone
    /// (a prefill with no logits), so the last layer computes its K/V and stops there: no
    /// queries, attention, o or MLP (llama.cpp likewise keeps only the rows it outputs),
    /// and the residual stream returned is not the model's output.
    fn layers(&self, pass: Pass, segs: &mut [Segment<'_, B>], hidden: bool) -> Result<B::Act> {
        self.layers_idle(pass, segs, hidden, None)
    }

    /// [`Model::layers`], with [`Model::forward_hidden`]'s `idle` (one segment only).
    fn layers_idle(
        &self,
        pass: Pass,
        segs: &mut [Segment<'_, B>],
        hidden: bool,
        mut idle: Option<&mut Idle<'_, B>>,
    ) -> Result<B::Act> {
        let be = &self.backend;
        let shapes: Vec<SegShape<'_>> = segs.iter().map(Segment::shape).collect();
        let mut run = self.prepare(&shapes)?;
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
            if let [seg] = &segs[..] {
                seg.cache
                    .abort
                    .check(|| format!("before decoder layer {li}"))?;
            } else if segs.iter().any(|s| s.cache.abort.is_requested()) {
                // The caller takes the requests of the sequences that made them and runs
                // the others again.
                return Err(Error::new(
                    ErrorKind::Aborted,
                    format!("a sequence of the batch asked to stop before decoder layer {li}"),
                ));
            }
            // The linears this pass runs: the draft's substitutes, the resident weights,
            // or this layer's weights streamed into a staging buffer.
            let mut streamed = None;
            let lin: &Linears<B::Weight> = match (pass, &l.full) {
                (Pass::Target, None) => {
                    let tier = stream
                        .as_mut()
                        .ok_or_else(|| Error::internal("an offloaded layer without a streamer"))?;
                    if let (Some(f), [seg]) = (idle.as_mut(), &mut segs[..]) {
                        // (an abort request ends the waiting work: the layer after this
                        // one takes it)
                        while !be.tier_ready(tier) && !seg.cache.abort.is_requested() {
                            if !f(seg.cache)? {
                                idle = None;
                                break;
                            }
                        }
                    }
                    let (ticket, w) = be.tier_fetch(tier, li)?;
                    &streamed.insert((ticket, Linears::from_vec(w)?)).1
                }
                _ => self.resident_linears(pass, li)?,
            };
            // the last layer of a pass that wants no output: its K/V alone
            let kv_only = !hidden && li + 1 == self.layers.len();
            self.layer(&mut run, segs, li, lin, kv_only)?;
            if let (Some((ticket, w)), Some(stream)) = (streamed, stream.as_mut()) {
                drop(w);
                be.tier_release(stream, ticket)?;
            }
        }
        Ok(run.x)
    }

    /// The linears `pass` runs in layer `li` that need no streaming: the draft's
    /// substitutes, else the resident weights.
    fn resident_linears(&self, pass: Pass, li: usize) -> Result<&Linears<B::Weight>> {
        let l = &self.layers[li];
        match (pass, &l.full, &l.substitutes) {
            (Pass::Draft, _, Some(sub)) => Ok(sub),
            (_, Some(full), _) => Ok(full),
            (Pass::Target, None, _) => Err(Error::internal(format!(
                "layer {li} is offloaded: a target pass streams it"
            ))),
            (Pass::Draft, None, None) => Err(Error::internal(format!(
                "layer {li} is offloaded but has no substitute"
            ))),
        }
    }

    /// Checks the segments and sets up a pass over them: its buffers and the embedded
    /// residual stream.
    fn prepare(&self, segs: &[SegShape<'_>]) -> Result<Run<B>> {
        let c = &self.config;
        let mut n = 0;
        for seg in segs.iter() {
            let m = seg.tokens.len();
            if seg.positions.len() != m || seg.mask.len() != m {
                return Err(Error::internal(
                    "forward: tokens, positions and mask disagree",
                ));
            }
            seg.mask.validate(seg.first)?;
            self.check_tokens(seg.tokens)?;
            if seg.committed + seg.first + m > seg.capacity {
                return Err(Error::new(
                    ErrorKind::ContextFull,
                    format!(
                        "{} committed + {} new tokens exceed the KV cache capacity of {}",
                        seg.committed,
                        seg.first + m,
                        seg.capacity
                    ),
                ));
            }
            n += m;
        }
        let tokens: Vec<u32> = segs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<usize> = segs
            .iter()
            .flat_map(|s| s.positions.iter().copied())
            .collect();
        let be = &self.backend;
        // Residual stream.
        let mut x = be.act(n, c.hidden)?;
        be.embed(&self.embed, &tokens, &mut x)?;
        if let Some(s) = c.embed_scale {
            be.scale(&mut x, s)?;
        }
        // Windowed layers see only the last `w` positions: each segment's masks, made once.
        let mut windowed: Vec<Vec<(usize, AttnMask)>> = vec![Vec::new(); segs.len()];
        for (seg, masks) in segs.iter().zip(&mut windowed) {
            for w in c.attn_window.iter().flatten() {
                if !masks.iter().any(|(x, _)| x == w) {
                    let m = seg.mask.windowed(seg.positions, *w, seg.committed);
                    masks.push((*w, m));
                }
            }
        }
        Ok(Run {
            positions,
            x,
            h: be.act(n, c.hidden)?,
            // The sandwich norms' output (Gemma 3).
            hn: match c.sandwich_norms {
                true => Some(be.act(n, c.hidden)?),
                false => None,
            },
            q: be.act(n, c.q_dim())?,
            k: be.act(n, c.kv_dim())?,
            v: be.act(n, c.kv_dim())?,
            attn: be.act(n, c.q_dim())?,
            gate: be.act(n, c.intermediate)?,
            up: be.act(n, c.intermediate)?,
            windowed,
        })
    }

    /// Decoder layer `li` of a pass with linears `lin`: attention block (norm, q/k/v
    /// projections, q/k norms, rotary, cache write, attention, o, its sandwich norm),
    /// then the MLP block; with `kv_only` the K/V written and nothing else.
    fn layer(
        &self,
        run: &mut Run<B>,
        segs: &mut [Segment<'_, B>],
        li: usize,
        lin: &Linears<B::Weight>,
        kv_only: bool,
    ) -> Result<()> {
        let (c, be, l) = (&self.config, &self.backend, &self.layers[li]);
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            scale: c.attn_scale,
        };
        let Run {
            positions,
            x,
            h,
            hn,
            q,
            k,
            v,
            attn,
            gate,
            up,
            windowed,
        } = run;
        let n = positions.len();
        be.rms_norm(x, &l.input_norm, c.rms_eps, h)?;
        let bias = l.qkv_bias.as_ref();
        if !kv_only {
            be.linear(h, &lin[Linear::Q], bias.map(|b| &b[0]), q)?;
        }
        be.linear(h, &lin[Linear::K], bias.map(|b| &b[1]), k)?;
        be.linear(h, &lin[Linear::V], bias.map(|b| &b[2]), v)?;
        if let Some([qn, kn]) = &l.qk_norm {
            if !kv_only {
                self.head_norm(q, qn, n, c.n_heads)?;
            }
            self.head_norm(k, kn, n, c.n_kv_heads)?;
        }
        let inv_freq = match (&self.inv_freq_local, c.attn_window[li]) {
            (Some(local), Some(_)) => local,
            _ => &self.inv_freq,
        };
        if !kv_only {
            be.rope(q, positions, inv_freq)?;
        }
        be.rope(k, positions, inv_freq)?;
        let qr = (!kv_only).then_some(&*q);
        self.attend(segs, windowed, li, shape, qr, k, v, attn)?;
        if kv_only {
            return Ok(());
        }
        be.linear(attn, &lin[Linear::O], None, h)?;
        self.add_residual(x, h, l.sandwich.as_ref().map(|s| &s[0]), hn)?;
        // MLP block: norm, gate/up, act(gate) * up, down.
        be.rms_norm(x, &l.post_norm, c.rms_eps, h)?;
        be.linear(h, &lin[Linear::Gate], None, gate)?;
        be.linear(h, &lin[Linear::Up], None, up)?;
        match c.hidden_act {
            Activation::Silu => be.silu_mul(gate, up)?,
            Activation::GeluTanh => be.gelu_tanh_mul(gate, up)?,
        }
        be.linear(gate, &lin[Linear::Down], None, h)?;
        self.add_residual(x, h, l.sandwich.as_ref().map(|s| &s[1]), hn)
    }

    /// Starts a draft forward to be run a layer at a time ([`Model::draft_advance`]): the
    /// same forward as [`Model::forward_at`] with [`Pass::Draft`] and the logits of every
    /// row, in pieces that fit between the layers of a target pass.
    pub(crate) fn draft_begin(
        &self,
        cache: &KvCache<B>,
        first: usize,
        tokens: Vec<u32>,
        positions: Vec<usize>,
        mask: AttnMask,
    ) -> Result<DraftRun<B>> {
        let run = self.prepare(&[SegShape {
            tokens: &tokens,
            positions: &positions,
            mask: &mask,
            first,
            committed: cache.committed,
            capacity: cache.capacity,
        }])?;
        Ok(DraftRun {
            run,
            first,
            tokens,
            positions,
            mask,
            next: 0,
            head: None,
        })
    }

    /// Runs the next step of `r` over `cache` (the cache it began on, its committed
    /// positions unchanged since): a layer, or after the last a part of the output head
    /// ([`HEAD_ROWS_PER_STEP`] rows, or the whole head where the backend has no views of
    /// part of it); after the head's last part, the logits of every row
    /// (`Model::draft_vocab` columns each, the bits [`Model::forward_at`] gives).
    pub(crate) fn draft_advance(
        &self,
        r: &mut DraftRun<B>,
        cache: &mut KvCache<B>,
    ) -> Result<Option<Vec<f32>>> {
        let be = &self.backend;
        let li = r.next;
        if li < self.layers.len() {
            let mut segs = [Segment {
                cache,
                first: r.first,
                tokens: &r.tokens,
                positions: &r.positions,
                mask: &r.mask,
            }];
            let lin = self.resident_linears(Pass::Draft, li)?;
            self.layer(&mut r.run, &mut segs, li, lin, false)?;
            r.next += 1;
            return Ok(None);
        }
        let (w, cols) = self.head(Pass::Draft);
        let m = r.tokens.len();
        let (normed, logits, at) = match &mut r.head {
            Some(h) => h,
            None => {
                let rows: Vec<usize> = (0..m).collect();
                let normed = self.final_norm(&r.run.x, &rows)?;
                r.head.insert((normed, vec![0.0; m * cols], 0))
            }
        };
        let n = HEAD_ROWS_PER_STEP.min(cols - *at);
        match be.weight_row_range(w, *at, n) {
            Ok(part) => {
                let mut out = be.act(m, n)?;
                be.linear(normed, &part, None, &mut out)?;
                let out = be.to_host(&out)?;
                for (dst, src) in logits.chunks_exact_mut(cols).zip(out.chunks_exact(n)) {
                    dst[*at..*at + n].copy_from_slice(src);
                }
                *at += n;
            }
            Err(_) => {
                let mut out = be.act(m, cols)?;
                be.linear(normed, w, None, &mut out)?;
                *logits = be.to_host(&out)?;
                *at = cols;
            }
        }
        if *at < cols {
            return Ok(None);
        }
        let mut logits = std::mem::take(logits);
        self.rescore_shortlist(normed, &mut logits)?;
        Ok(Some(logits))
    }

    /// Writes each segment's rows of `k`, `v` into its cache and runs its rows of `q`
    /// against that cache into the same rows of `out` (no `q`: the K/V alone). One segment
    /// uses the batch's activations as they are; several copy their rows in and out.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        segs: &mut [Segment<'_, B>],
        windowed: &[Vec<(usize, AttnMask)>],
        li: usize,
        shape: AttnShape,
        q: Option<&B::Act>,
        k: &B::Act,
        v: &B::Act,
        out: &mut B::Act,
    ) -> Result<()> {
        let (c, be) = (&self.config, &self.backend);
        let single = segs.len() == 1;
        let mut row = 0;
        for (seg, masks) in segs.iter_mut().zip(windowed) {
            let m = seg.tokens.len();
            let mask = match c.attn_window[li] {
                Some(w) => &masks.iter().find(|(x, _)| *x == w).expect("made above").1,
                None => seg.mask,
            };
            let at = seg.cache.committed + seg.first;
            let committed = seg.cache.committed;
            if single {
                be.kv_write(&mut seg.cache.store, li, at, k, v)?;
                if let Some(q) = q {
                    be.attention(q, &seg.cache.store, li, committed, mask, shape, out)?;
                }
            } else {
                let rows: Vec<usize> = (row..row + m).collect();
                let part = |x: &B::Act, cols: usize| -> Result<B::Act> {
                    let mut p = be.act(m, cols)?;
                    be.gather_rows(x, &rows, &mut p)?;
                    Ok(p)
                };
                let (ks, vs) = (part(k, c.kv_dim())?, part(v, c.kv_dim())?);
                be.kv_write(&mut seg.cache.store, li, at, &ks, &vs)?;
                if let Some(q) = q {
                    let qs = part(q, c.q_dim())?;
                    let mut os = be.act(m, c.q_dim())?;
                    be.attention(&qs, &seg.cache.store, li, committed, mask, shape, &mut os)?;
                    be.set_rows(out, row, &os)?;
                }
            }
            row += m;
        }
        Ok(())
    }

    /// `x += y`, or `x += rmsnorm(y) * norm` with a sandwich norm (into `tmp`).
    fn add_residual(
        &self,
        x: &mut B::Act,
        y: &B::Act,
        norm: Option<&B::Weight>,
        tmp: &mut Option<B::Act>,
    ) -> Result<()> {
        let be = &self.backend;
        match (norm, tmp) {
            (Some(w), Some(t)) => {
                be.rms_norm(y, w, self.config.rms_eps, t)?;
                be.add(x, t)
            }
            (None, _) => be.add(x, y),
            (Some(_), None) => Err(Error::internal("a sandwich norm without its buffer")),
        }
    }

    /// RMSNorm of every head of `x`, `(rows, heads * head_dim)`, with `w`, in place.
    fn head_norm(&self, x: &mut B::Act, w: &B::Weight, rows: usize, heads: usize) -> Result<()> {
        let (be, hd) = (&self.backend, self.config.head_dim);
        be.reshape(x, rows * heads, hd)?;
        let mut out = be.act(rows * heads, hd)?;
        be.rms_norm(x, w, self.config.rms_eps, &mut out)?;
        be.reshape(&mut out, rows, heads * hd)?;
        *x = out;
        Ok(())
    }

    /// The `pass`'s logits of rows `logit_rows` of a batch's residual stream `x` (from
    /// [`Model::forward_hidden`]): final norm and lm_head, `(logit_rows.len(), vocab)`
    /// row-major (the draft's: [`Model::draft_vocab`] columns). A row's logits do not
    /// depend on which other rows are asked for. The rows must be inside the batch (the
    /// callers check; a backend may panic otherwise).
    pub(crate) fn logits(&self, pass: Pass, x: &B::Act, logit_rows: &[usize]) -> Result<Vec<f32>> {
        let be = &self.backend;
        if logit_rows.is_empty() {
            return Ok(Vec::new());
        }
        let normed = self.final_norm(x, logit_rows)?;
        let (head, cols) = self.head(pass);
        let mut logits = be.act(logit_rows.len(), cols)?;
        be.linear(&normed, head, None, &mut logits)?;
        let mut logits = be.to_host(&logits)?;
        if pass == Pass::Draft {
            self.rescore_shortlist(&normed, &mut logits)?;
        }
        Ok(logits)
    }

    /// With a draft shortlist, the logits of the tokens each draft row's quantized head
    /// ranks first become the target head's over the same normed row (`normed`, one row
    /// per `logits` row): the draft proposes what the full-precision head would, reading
    /// a few head rows instead of all of them. The other tokens keep the quantized
    /// head's logits (they rank below, and count in the row's softmax). Without one,
    /// nothing changes.
    fn rescore_shortlist(&self, normed: &B::Act, logits: &mut [f32]) -> Result<()> {
        let (k, cols, hidden) = (self.draft_shortlist, self.draft_vocab, self.config.hidden);
        if k == 0 || logits.is_empty() {
            return Ok(());
        }
        let be = &self.backend;
        let picks: Vec<Vec<u32>> = logits
            .chunks_exact(cols)
            .map(|row| top_logits(row, k).into_iter().map(|(_, t)| t).collect())
            .collect();
        // One gather of the head rows every row asks for.
        let mut ids: Vec<u32> = picks.concat();
        ids.sort_unstable();
        ids.dedup();
        let target = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut rows = be.act(ids.len(), hidden)?;
        be.embed(target, &ids, &mut rows)?;
        let (rows, x) = (be.to_host(&rows)?, be.to_host(normed)?);
        for ((row, picked), x) in logits
            .chunks_exact_mut(cols)
            .zip(&picks)
            .zip(x.chunks_exact(hidden))
        {
            for &t in picked {
                let j = ids
                    .binary_search(&t)
                    .map_err(|_| Error::internal("shortlist id"))?;
                let w = &rows[j * hidden..(j + 1) * hidden];
                row[t as usize] = w.iter().zip(x).map(|(a, b)| a * b).sum();
            }
        }
        Ok(())
    }

    /// Rows `rows` of the residual stream `x` through the final norm.
    fn final_norm(&self, x: &B::Act, rows: &[usize]) -> Result<B::Act> {
        let (c, be) = (&self.config, &self.backend);
        let mut sel = be.act(rows.len(), c.hidden)?;
        be.gather_rows(x, rows, &mut sel)?;
        let mut normed = be.act(rows.len(), c.hidden)?;
        be.rms_norm(&sel, &self.norm, c.rms_eps, &mut normed)?;
        Ok(normed)
    }

    /// The output head `pass` runs and its rows (the draft's: [`Model::draft_vocab`]).
    fn head(&self, pass: Pass) -> (&B::Weight, usize) {
        match (pass, &self.draft_lm_head) {
            (Pass::Draft, Some(q)) => (q, self.draft_vocab),
            _ => (
                self.lm_head.as_ref().unwrap_or(&self.embed),
                self.config.vocab,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linears_are_indexed_in_the_one_order() {
        let l = Linears::from_vec(Linear::ALL.iter().map(|k| k.module()).collect()).unwrap();
        for k in Linear::ALL {
            assert_eq!(l[k], k.module());
        }
        assert!(Linears::from_vec(vec![0u8; 6]).is_err());
    }
}
