//! llama.cpp's q/k row permutation, and its inverse as a row index map.
//!
//! For Llama-architecture models, `convert_hf_to_gguf.py` (`LlamaModel.permute`) stores
//! `attn_q` and `attn_k` (weights, and biases if any) with the rows of every head
//! reordered from Hugging Face's "rotate half" RoPE layout to ggml's interleaved one:
//!
//! ```text
//! w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
//! ```
//!
//! (`n_head` is `head_count` for q, `head_count_kv` for k.) The permutation moves whole
//! rows, so undoing it is a map from each Hugging Face row to the GGUF row that holds it:
//! a quantized row of blocks moves as a unit, nothing is dequantized to reorder it.

use crate::error::{Error, Result};

fn check(rows: usize, n_head: usize) -> Result<usize> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(Error::invalid_model(format!(
            "q/k permutation: {rows} rows do not split into {n_head} heads of an even \
             number of rows"
        )));
    }
    Ok(rows / n_head)
}

/// The inverse of llama.cpp's permutation as a row map: Hugging Face row `r` is GGUF row
/// `map[r]`. Within each head of `rows / n_head` rows, HF row `i * half + j` (i in 0..2,
/// j in 0..half) is GGUF row `2 * j + i`.
pub(crate) fn unpermute_rows(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    let per_head = check(rows, n_head)?;
    let half = per_head / 2;
    Ok((0..rows)
        .map(|r| {
            let (h, k) = (r / per_head, r % per_head);
            let (i, j) = (k / half, k % half);
            h * per_head + 2 * j + i
        })
        .collect())
}

/// llama.cpp's forward permutation as a row map: GGUF row `g` is Hugging Face row
/// `map[g]`. The inverse of [`unpermute_rows`].
#[cfg_attr(not(test), allow(dead_code))] // used by the tests only
pub(crate) fn permute_rows(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    let inv = unpermute_rows(rows, n_head)?;
    let mut map = vec![0; rows];
    for (hf, &g) in inv.iter().enumerate() {
        map[g] = hf;
    }
    Ok(map)
}

/// Gathers rows: row `r` of the result is row `map[r]` of `src`, rows being `row_len`
/// items (elements, or bytes of a quantized row).
#[cfg_attr(not(test), allow(dead_code))] // used by the tests only
pub(crate) fn gather_rows<T: Copy>(src: &[T], row_len: usize, map: &[usize]) -> Vec<T> {
    assert_eq!(src.len(), row_len * map.len(), "gather_rows: size mismatch");
    let mut out = Vec::with_capacity(src.len());
    for &g in map {
        out.extend_from_slice(&src[g * row_len..(g + 1) * row_len]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LlamaModel.permute` written out with explicit indices: the (h, i, j) element of
    /// `w.reshape(n_head, 2, half, cols)` lands at (h, j, i) of shape (n_head, half, 2).
    fn llama_permute(w: &[u32], rows: usize, cols: usize, n_head: usize) -> Vec<u32> {
        let half = rows / n_head / 2;
        let mut out = vec![0; w.len()];
        for h in 0..n_head {
            for i in 0..2 {
                for j in 0..half {
                    let src = h * 2 * half + i * half + j;
                    let dst = h * 2 * half + j * 2 + i;
                    out[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&w[src * cols..(src + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_permute() {
        for (rows, cols, heads) in [(8, 3, 1), (24, 2, 3), (576, 1, 9), (192, 4, 3), (2, 1, 1)] {
            let hf: Vec<u32> = (0..(rows * cols) as u32).collect();
            let gguf = llama_permute(&hf, rows, cols, heads);
            let back = gather_rows(&gguf, cols, &unpermute_rows(rows, heads).unwrap());
            assert_eq!(back, hf, "rows {rows} heads {heads}");
            let fwd = gather_rows(&hf, cols, &permute_rows(rows, heads).unwrap());
            assert_eq!(fwd, gguf, "rows {rows} heads {heads}");
        }
    }

    #[test]
    fn small_map_by_hand() {
        // One head of 4 rows: HF rows [a0 a1 | b0 b1] are stored interleaved a0 b0 a1 b1.
        assert_eq!(unpermute_rows(4, 1).unwrap(), [0, 2, 1, 3]);
        assert_eq!(unpermute_rows(6, 1).unwrap(), [0, 2, 4, 1, 3, 5]);
        assert_eq!(permute_rows(6, 1).unwrap(), [0, 3, 1, 4, 2, 5]);
    }

    #[test]
    fn bad_head_counts_are_errors() {
        assert!(unpermute_rows(10, 3).is_err());
        assert!(unpermute_rows(6, 2).is_err());
        assert!(unpermute_rows(6, 0).is_err());
    }
}
