//! The memory planner: a pure function from (model sizes, device budget, context, tree,
//! substitute format) to a placement of every decoder layer, with a byte account.
//!
//! Fill order: what the draft always needs stays resident first (lm_head, norms and biases,
//! the quantized substitutes of every layer, the KV cache, two staging buffers for streamed
//! layers, activations, headroom). That is the minimum; a smaller budget is refused with an
//! error stating it. Then, in layer order, as many decoder layers as fit become resident
//! in full precision (a resident layer needs no substitute: the draft shares it). The rest
//! are offloaded: streamed from the slow tier on every target pass.
//!
//! The embedding table is only read a row per token, so when lm_head is untied it stays in
//! the slow tier (rows are paged in on demand); when tied it is lm_head and is resident.

use crate::backend::KvDtype;
use crate::checkpoint::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::quant::QuantConfig;
use crate::util::human;

/// Where a decoder layer's full-precision linears live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// On the device; the target and the draft both use them.
    Resident,
    /// In the slow tier, streamed every target pass; the draft uses a substitute.
    Offloaded,
}

/// Byte sizes of a model's parts (from the checkpoint headers; nothing is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSizes {
    /// Embedding table.
    pub embed: u64,
    /// lm_head, `0` when tied to the embedding.
    pub lm_head: u64,
    /// All 1-D tensors: norms and biases.
    pub vectors: u64,
    /// Per layer: the seven full-precision linears.
    pub layer_linears: Vec<u64>,
    /// Per layer: the seven substitutes in the planned format.
    pub layer_substitutes: Vec<u64>,
    /// lm_head (the embedding when tied) in the planned format, for a draft with its own
    /// quantized lm_head.
    pub lm_head_substitute: u64,
}

/// What the plan is for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// Device memory budget in bytes.
    pub budget: u64,
    /// Context length (KV cache positions).
    pub context: usize,
    /// Largest verified tree (KV scratch and activations).
    pub tree_tokens: usize,
    /// Sequences that may be alive at once, each with its own KV cache and (stepping
    /// concurrently) its own activations; at least 1.
    pub sequences: usize,
    /// Whether the engine builds a draft. Without one no substitutes are reserved: the
    /// memory they would take holds more full-precision layers (plain decoding's best
    /// placement).
    pub draft: bool,
    /// Substitute format.
    pub quant: QuantConfig,
    /// Whether the draft gets its own quantized lm_head.
    pub draft_lm_head: bool,
    /// Whether resident layers keep a substitute too (the draft then never reads a
    /// full-precision layer).
    pub substitute_resident: bool,
    /// Element type of the KV caches.
    pub kv_dtype: KvDtype,
}

/// The byte account of a placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanBytes {
    /// lm_head (the embedding when tied).
    pub lm_head: u64,
    /// Norms and biases.
    pub vectors: u64,
    /// Substitutes of the offloaded layers.
    pub substitutes: u64,
    /// The draft's quantized lm_head (`0` when it shares the target's).
    pub draft_lm_head: u64,
    /// Full-precision resident layers.
    pub resident_layers: u64,
    /// KV caches for context + tree, one per sequence, in the requested element type.
    pub kv_cache: u64,
    /// Staging buffers for streamed layers.
    pub staging: u64,
    /// Activations of the largest batch, logits included, one set per sequence.
    pub activations: u64,
    /// Headroom for allocator slack and small buffers.
    pub headroom: u64,
    /// Sum of the above.
    pub total: u64,
    /// The budget.
    pub budget: u64,
    /// Bytes read from the slow tier per target pass.
    pub streamed_per_pass: u64,
}

/// A placement of every decoder layer, with its byte account.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Placement {
    /// Per decoder layer.
    pub layers: Vec<Residency>,
    /// Number of staging buffers (a ring).
    pub staging_buffers: usize,
    /// The account.
    pub bytes: PlanBytes,
}

impl Placement {
    /// Indices of the offloaded layers, ascending.
    pub fn offloaded(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&l| self.layers[l] == Residency::Offloaded)
            .collect()
    }
}

/// Staging buffers in the ring: double buffering (one computing, one loading).
pub const STAGING_BUFFERS: usize = 2;
/// Alignment slack per tensor in a staging buffer (O_DIRECT reads whole 4 KiB blocks).
pub const STAGING_SLACK_PER_TENSOR: u64 = 2 * 4096;

/// Slots of one sequence's KV cache: its context, scratch for a verified tree of
/// `tree_tokens`, and with a draft as many again for the draft's own tree, which stays
/// while the target verifies (so drafting goes on during the pass).
pub fn kv_slots(context: usize, tree_tokens: usize, draft: bool) -> usize {
    context + tree_tokens * (1 + usize::from(draft))
}

/// The smallest budget [`plan`] accepts for this request (whatever `r.budget` says).
pub fn minimum_budget(c: &ModelConfig, s: &ModelSizes, r: &PlanRequest) -> u64 {
    let mut lo = 0u64;
    let mut hi = 1u64 << 50;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if plan(
            c,
            s,
            &PlanRequest {
                budget: mid,
                ..r.clone()
            },
        )
        .is_ok()
        {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Plans a placement; an error with the minimum when the budget is too small (and, for
/// several sequences, how many it holds).
pub fn plan(c: &ModelConfig, s: &ModelSizes, r: &PlanRequest) -> Result<Placement> {
    plan_one(c, s, r).map_err(|e| {
        if e.kind() != ErrorKind::OutOfMemory || r.sequences <= 1 {
            return e;
        }
        // Fewer sequences may fit: the most that do (planning is monotone in their count).
        let fits = |n: usize| {
            let q = PlanRequest {
                sequences: n,
                ..r.clone()
            };
            plan_one(c, s, &q).is_ok()
        };
        let (mut lo, mut hi) = (0, r.sequences - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let holds = match lo {
            0 => "not even one".to_string(),
            1 => "1 sequence".to_string(),
            n => format!("{n} sequences"),
        };
        Error::new(
            ErrorKind::OutOfMemory,
            format!(
                "{} for {} sequences at once; it holds {holds}",
                e.message(),
                r.sequences
            ),
        )
    })
}

fn plan_one(c: &ModelConfig, s: &ModelSizes, r: &PlanRequest) -> Result<Placement> {
    r.quant.validate()?;
    if r.sequences == 0 {
        return Err(Error::invalid_argument(
            "a plan is for at least one sequence",
        ));
    }
    let lm_head = if c.tie_embeddings { s.embed } else { s.lm_head };
    let n = r.sequences as u64;
    let kv_cache = n
        * (kv_slots(r.context, r.tree_tokens, r.draft)
            * c.n_layers
            * 2
            * c.kv_dim()
            * r.kv_dtype.bytes()) as u64;
    let max_layer = s.layer_linears.iter().copied().max().unwrap_or(0);
    let staging = STAGING_BUFFERS as u64 * (max_layer + 7 * STAGING_SLACK_PER_TENSOR);
    let per_token = c.hidden * 3 + c.q_dim() * 2 + c.kv_dim() * 2 + c.intermediate * 2 + c.vocab;
    let activations = n * (r.tree_tokens.max(1) * per_token * 4) as u64;
    let headroom = (16 << 20) + r.budget / 50;
    let subs = |l: usize| if r.draft { s.layer_substitutes[l] } else { 0 };
    let all_subs: u64 = (0..c.n_layers).map(subs).sum();
    let draft_lm_head = if r.draft && r.draft_lm_head {
        s.lm_head_substitute
    } else {
        0
    };
    let fixed = lm_head + draft_lm_head + s.vectors + kv_cache + activations + headroom;
    let minimum = fixed + all_subs + staging;
    if r.budget < minimum {
        // The headroom grows with the budget (2%): solve for the budget that fits.
        let needed = (minimum - r.budget / 50) * 50 / 49 + 1;
        return Err(Error::new(
            ErrorKind::OutOfMemory,
            format!(
                "a budget of {} is too small: this model needs at least {} ({} lm_head, {} substitutes, {} {} KV cache for {} positions{}, {} staging, {} activations, {} headroom)",
                human(r.budget),
                human(needed),
                human(lm_head + draft_lm_head),
                human(all_subs),
                human(kv_cache),
                r.kv_dtype,
                kv_slots(r.context, r.tree_tokens, r.draft),
                if n > 1 { format!(" x {n} sequences") } else { String::new() },
                human(staging),
                human(activations),
                human(headroom)
            ),
        ));
    }
    let mut layers = vec![Residency::Offloaded; c.n_layers];
    let mut used = minimum;
    for l in 0..c.n_layers {
        let extra = if r.substitute_resident {
            s.layer_linears[l]
        } else {
            s.layer_linears[l].saturating_sub(subs(l))
        };
        // The last offloaded layer going resident also frees the staging buffers.
        let offloaded_left = layers
            .iter()
            .filter(|&&x| x == Residency::Offloaded)
            .count();
        let freed = if offloaded_left == 1 { staging } else { 0 };
        if used + extra <= r.budget + freed {
            layers[l] = Residency::Resident;
            used = used + extra - freed;
        } else {
            break;
        }
    }
    let offloaded: Vec<usize> = (0..c.n_layers)
        .filter(|&l| layers[l] == Residency::Offloaded)
        .collect();
    let resident_layers: u64 = (0..c.n_layers)
        .filter(|&l| layers[l] == Residency::Resident)
        .map(|l| s.layer_linears[l])
        .sum();
    let substitutes: u64 = if r.substitute_resident {
        all_subs
    } else {
        offloaded.iter().map(|&l| subs(l)).sum()
    };
    let staging = if offloaded.is_empty() { 0 } else { staging };
    let streamed_per_pass = offloaded.iter().map(|&l| s.layer_linears[l]).sum();
    let total = lm_head
        + draft_lm_head
        + s.vectors
        + substitutes
        + resident_layers
        + kv_cache
        + staging
        + activations
        + headroom;
    Ok(Placement {
        layers,
        staging_buffers: if offloaded.is_empty() {
            0
        } else {
            STAGING_BUFFERS
        },
        bytes: PlanBytes {
            lm_head,
            vectors: s.vectors,
            substitutes,
            draft_lm_head,
            resident_layers,
            kv_cache,
            staging,
            activations,
            headroom,
            total,
            budget: r.budget,
            streamed_per_pass,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Arch;
    use crate::util::parse_bytes;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: Arch::Qwen2,
            hidden: 64,
            intermediate: 128,
            n_layers: 4,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            vocab: 100,
            rms_eps: 1e-6,
            rope_theta: 1e4,
            rope_scaling: crate::checkpoint::RopeScaling::None,
            rope_local_theta: None,
            max_position: 256,
            tie_embeddings: false,
            qkv_bias: true,
            qk_norm: false,
            attn_window: vec![None; 4],
            hidden_act: crate::checkpoint::Activation::Silu,
            attn_scale: 0.25,
            embed_scale: None,
            norm_weight_offset: 0.0,
            sandwich_norms: false,
            eos_ids: vec![1],
            bos_id: None,
        }
    }

    fn sizes() -> ModelSizes {
        ModelSizes {
            embed: 12_800,
            lm_head: 12_800,
            vectors: 2_000,
            layer_linears: vec![1_000_000; 4],
            layer_substitutes: vec![300_000; 4],
            lm_head_substitute: 3_600,
        }
    }

    fn req(budget: u64) -> PlanRequest {
        PlanRequest {
            budget,
            context: 100,
            tree_tokens: 28,
            sequences: 1,
            draft: true,
            quant: QuantConfig::default(),
            draft_lm_head: false,
            substitute_resident: false,
            kv_dtype: KvDtype::F32,
        }
    }

    #[test]
    fn a_two_byte_kv_cache_halves_its_account_and_frees_room_for_layers() {
        let (c, s) = (cfg(), sizes());
        let f16 = |budget| PlanRequest {
            kv_dtype: KvDtype::F16,
            ..req(budget)
        };
        // 50 kB short of a layer's 700 kB for an f32 cache; the f16 cache frees 64 kB
        let budget = minimum_budget(&c, &s, &req(0)) + 650_000;
        let (p32, p16) = (
            plan(&c, &s, &req(budget)).unwrap(),
            plan(&c, &s, &f16(budget)).unwrap(),
        );
        assert_eq!(2 * p16.bytes.kv_cache, p32.bytes.kv_cache);
        assert_eq!(
            p32.bytes.kv_cache,
            // context + the verified tree's scratch + the draft's own region
            (100 + 2 * 28) * 4 * 2 * c.kv_dim() as u64 * 4
        );
        assert!(minimum_budget(&c, &s, &f16(0)) < minimum_budget(&c, &s, &req(0)));
        assert_eq!(p32.offloaded().len(), 4);
        assert_eq!(p16.offloaded().len(), 3, "{p16:?}");
    }

    #[test]
    fn several_sequences_reserve_their_kv_and_activations_and_name_what_fits() {
        let (c, s) = (cfg(), sizes());
        let one = minimum_budget(&c, &s, &req(0));
        let four = |budget| PlanRequest {
            sequences: 4,
            ..req(budget)
        };
        let p1 = plan(&c, &s, &req(one)).unwrap();
        let p4 = plan(&c, &s, &four(minimum_budget(&c, &s, &four(0)))).unwrap();
        assert_eq!(p4.bytes.kv_cache, 4 * p1.bytes.kv_cache);
        assert_eq!(p4.bytes.activations, 4 * p1.bytes.activations);
        // Room for two sequences' KV and activations (and their headroom), not four.
        let per = p1.bytes.kv_cache + p1.bytes.activations;
        let two = minimum_budget(
            &c,
            &s,
            &PlanRequest {
                sequences: 2,
                ..req(0)
            },
        );
        assert!(two >= one + per);
        let e = plan(&c, &s, &four(two)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfMemory);
        assert!(
            e.message()
                .ends_with("for 4 sequences at once; it holds 2 sequences"),
            "{e}"
        );
        let e = plan(&c, &s, &four(one)).unwrap_err();
        assert!(e.message().ends_with("it holds 1 sequence"), "{e}");
        let e = plan(&c, &s, &four(one - 1)).unwrap_err();
        assert!(e.message().ends_with("it holds not even one"), "{e}");
        let zero = PlanRequest {
            sequences: 0,
            ..req(one)
        };
        assert_eq!(
            plan(&c, &s, &zero).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn substituting_resident_layers_costs_their_substitutes() {
        let (c, s) = (cfg(), sizes());
        let budget = minimum_budget(&c, &s, &req(0)) + 1_500_000;
        let plain = plan(&c, &s, &req(budget)).unwrap();
        let all = plan(
            &c,
            &s,
            &PlanRequest {
                substitute_resident: true,
                ..req(budget)
            },
        )
        .unwrap();
        // Each resident layer now also keeps its substitute: fewer layers fit.
        let resident = |p: &Placement| 4 - p.offloaded().len();
        assert!(resident(&all) < resident(&plain), "{plain:?} vs {all:?}");
        assert_eq!(all.bytes.substitutes, 4 * 300_000);
        assert!(all.bytes.total <= budget);
    }

    #[test]
    fn without_a_draft_no_substitutes_are_reserved() {
        let (c, s) = (cfg(), sizes());
        let no_draft = |budget| PlanRequest {
            draft: false,
            draft_lm_head: true, // ignored without a draft
            ..req(budget)
        };
        let (m_draft, m_plain) = (
            minimum_budget(&c, &s, &req(0)),
            minimum_budget(&c, &s, &no_draft(0)),
        );
        // The minimum drops by the four substitutes and the draft's KV region of 28
        // slots (over 0.98, the headroom's share).
        let dropped = (m_draft - m_plain) as f64;
        let draft_kv = 28.0 * 4.0 * 2.0 * c.kv_dim() as f64 * 4.0;
        assert!(
            (dropped - (1_200_000.0 + draft_kv) / 0.98).abs() < 2.0,
            "{m_draft} -> {m_plain}"
        );
        let budget = m_draft + 1_000_000;
        let (spec, plain) = (
            plan(&c, &s, &req(budget)).unwrap(),
            plan(&c, &s, &no_draft(budget)).unwrap(),
        );
        assert_eq!(plain.bytes.substitutes + plain.bytes.draft_lm_head, 0);
        assert!(
            plain.offloaded().len() < spec.offloaded().len(),
            "{spec:?} vs {plain:?}"
        );
        assert!(plain.bytes.total <= budget);
    }

    #[test]
    fn a_draft_lm_head_raises_the_minimum_by_its_size() {
        let (c, s) = (cfg(), sizes());
        let with = PlanRequest {
            draft_lm_head: true,
            ..req(0)
        };
        let (m0, m1) = (
            minimum_budget(&c, &s, &req(0)),
            minimum_budget(&c, &s, &with),
        );
        // The headroom is 2% of the budget, so the minimum grows by the size over 0.98.
        let grown = (m1 - m0) as f64;
        assert!((grown - 3_600.0 / 0.98).abs() < 2.0, "{m0} -> {m1}");
        let p = plan(&c, &s, &PlanRequest { budget: m1, ..with }).unwrap();
        assert_eq!(p.bytes.draft_lm_head, 3_600);
        assert!(p.bytes.total <= m1);
    }

    #[test]
    fn too_small_a_budget_states_the_minimum() {
        let e = plan(&cfg(), &sizes(), &req(1_000_000)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfMemory);
        assert!(e.message().contains("at least"), "{e}");
    }

    #[test]
    fn the_stated_minimum_plans() {
        let e = plan(&cfg(), &sizes(), &req(1_000_000)).unwrap_err();
        let msg = e.message();
        let at = msg.find("at least ").unwrap() + "at least ".len();
        let stated = msg[at..].split(" (").next().unwrap().replace(' ', "");
        let b = parse_bytes(&stated).unwrap();
        // The message rounds to 0.01 of a unit: allow that much.
        assert!(
            plan(&cfg(), &sizes(), &req(b + b / 100)).is_ok(),
            "{stated}"
        );
    }

    #[test]
    fn fills_layers_in_order_and_accounts_every_byte() {
        let c = cfg();
        let s = sizes();
        let min = minimum_budget(&c, &s, &req(0));
        assert!(plan(&c, &s, &req(min - 1)).is_err());
        let p = plan(&c, &s, &req(min)).unwrap();
        assert_eq!(p.offloaded(), vec![0, 1, 2, 3]);
        assert_eq!(p.bytes.streamed_per_pass, 4_000_000);
        assert!(p.bytes.total <= min);
        // One layer's worth more (full minus substitute, plus the 2% headroom on it):
        // layer 0 becomes resident.
        let p = plan(&c, &s, &req(min + 715_000)).unwrap();
        assert_eq!(p.layers[0], Residency::Resident);
        assert_eq!(p.offloaded(), vec![1, 2, 3]);
        assert_eq!(p.bytes.resident_layers, 1_000_000);
        assert_eq!(p.bytes.substitutes, 900_000);
        let b = &p.bytes;
        assert_eq!(
            b.total,
            b.lm_head
                + b.vectors
                + b.substitutes
                + b.resident_layers
                + b.kv_cache
                + b.staging
                + b.activations
                + b.headroom
        );
        // A huge budget: everything resident, no staging, nothing streamed.
        let p = plan(&c, &s, &req(1 << 40)).unwrap();
        assert!(p.offloaded().is_empty());
        assert_eq!(p.bytes.staging, 0);
        assert_eq!(p.bytes.streamed_per_pass, 0);
        assert_eq!(p.staging_buffers, 0);
    }
}
