//! Rotary position embeddings: the scaling kinds, the rope objects of config.json
//! (`rope_scaling` in transformers 4, `rope_parameters` in 5) and the inverse
//! frequencies the forward pass rotates by.

use serde_json::Value;

use super::{positive_f32, positive_usize, Fields};
use crate::error::Result;

/// How RoPE frequencies are scaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Every frequency divided by `factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f32,
    },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend
    /// between the two wavelength bounds.
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f32,
        /// `original_max_position_embeddings / low_freq_factor` is the low-frequency
        /// bound: longer wavelengths are divided by `factor`.
        low_freq_factor: f32,
        /// `original_max_position_embeddings / high_freq_factor` is the high-frequency
        /// bound.
        high_freq_factor: f32,
        /// The context the model was pre-trained with.
        original_max_position: usize,
    },
    /// Frequency `i` divided by `divisors[i]`: how llama.cpp's GGUF files store Llama
    /// 3.x's scaling (the `rope_freqs.weight` tensor).
    Divisors(Vec<f32>),
}

/// The RoPE settings of a rope object: `rope_scaling` (transformers 4) or
/// `rope_parameters` (transformers 5), named `key` in messages. Returns the scaling and
/// the theta the object states, if it does.
pub(super) fn rope_object(f: &Fields, key: &str, v: &Value) -> Result<(RopeScaling, Option<f32>)> {
    let Some(o) = v.as_object() else {
        return Err(f.bad(format!("field `{key}` must be an object, found {v}")));
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut get = |k: &'static str| {
        let r = o.get(k).filter(|v| !v.is_null());
        if r.is_some() {
            seen.push(k);
        }
        r
    };
    let kind = get("rope_type")
        .or_else(|| get("type"))
        .map(|t| t.as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "default".into());
    let theta = match get("rope_theta") {
        None => None,
        Some(t) => Some(positive_f32(t).ok_or_else(|| {
            f.bad(format!(
                "field `{key}`.`rope_theta` must be a positive number, found {t}"
            ))
        })?),
    };
    let num = |k: &str, x: Option<&Value>| -> Result<f32> {
        x.and_then(positive_f32).ok_or_else(|| {
            f.bad(format!(
                "field `{key}`.`{k}` must be a positive number for rope type {kind}"
            ))
        })
    };
    let scaling = match kind.as_str() {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num("factor", get("factor"))?,
        },
        "llama3" => {
            let factor = num("factor", get("factor"))?;
            let low_freq_factor = num("low_freq_factor", get("low_freq_factor"))?;
            let high_freq_factor = num("high_freq_factor", get("high_freq_factor"))?;
            let orig = get("original_max_position_embeddings");
            let original_max_position = orig.and_then(positive_usize).ok_or_else(|| {
                f.bad(format!(
                    "field `{key}`.`original_max_position_embeddings` must be a positive integer for rope type llama3"
                ))
            })?;
            if high_freq_factor <= low_freq_factor {
                return Err(f.bad(format!(
                    "field `{key}`: high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                )));
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            }
        }
        other => {
            return Err(f.unsupported(format!(
                "field `{key}` has rope type `{other}`; supported: default, linear, llama3"
            )))
        }
    };
    // Anything else in the object could change the frequencies: refuse it.
    if let Some(k) = o
        .iter()
        .find(|(k, v)| !v.is_null() && !seen.contains(&k.as_str()))
        .map(|(k, _)| k)
    {
        return Err(f.unsupported(format!(
            "field `{key}`.`{k}` is not understood for rope type {kind}"
        )));
    }
    Ok((scaling, theta))
}

/// RoPE inverse frequencies for base `theta` and heads of width `head_dim`,
/// `(head_dim / 2)`, with `scaling` applied as transformers computes them (f32).
pub(crate) fn inv_freq(theta: f32, head_dim: usize, scaling: &RopeScaling) -> Vec<f32> {
    let hd = head_dim;
    let base: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / hd as f32))
        .collect();
    match scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Divisors(d) => base.iter().zip(d).map(|(f, d)| f / d).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let (factor, low_freq_factor, high_freq_factor) =
                (*factor, *low_freq_factor, *high_freq_factor);
            let old = *original_max_position as f32;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}
