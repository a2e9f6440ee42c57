//! Which SIMD kernels this CPU runs: detected once, shared by the matrix products, the
//! quantizer and the fused low-bit product. AVX-512 needs AVX2/FMA/F16C and
//! AVX-512 F/BW/VL; `SUBSPEC_NO_AVX512` (any value) forbids it (to test the AVX2 path).
//! AVX-512 VNNI, where present, and otherwise AVX2 give the quantized product int8
//! activations (`SUBSPEC_NO_VNNI` forbids the VNNI kernel, `SUBSPEC_NO_INT8` both).

/// Which SIMD code this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// Lanes one pass of the batched product's kernel takes: a 16-lane accumulator is one
    /// AVX-512 register, or two AVX2 ones run one after the other (see [`packed_at`]).
    pub(crate) fn pass_lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            _ => 8,
        }
    }
}

/// Where element `i` (of a body of `body`, a multiple of 16) of row `r` of a tile of `rr`
/// rows (or tokens) lies in the batched product's layout for passes of `pass` lanes (8 or
/// 16, [`Isa::pass_lanes`]): `((h * body / 16 + i / 16) * rr + r) * pass + i % pass` for
/// `h = i % 16 / pass`. Each block of 16 is cut into `16 / pass` parts; part `h` of every
/// block comes before part `h + 1` of any, the tile's rows interleaved block by block, so
/// one pass over a part's lanes reads one sequential stream.
#[inline(always)]
pub(crate) fn packed_at(i: usize, r: usize, rr: usize, body: usize, pass: usize) -> usize {
    debug_assert!(pass == 8 || pass == 16);
    // shifts and masks: the widening loops call this for every 8 elements
    let p = pass.trailing_zeros();
    let h = (i & 15) >> p;
    ((((h * body) >> 4) + (i >> 4)) * rr + r) * pass + (i & (pass - 1))
}

/// The best ISA of this CPU; `SUBSPEC_NO_AVX512` (any value) forbids AVX-512.
pub(crate) fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let all = supported_isas();
        if std::env::var_os("SUBSPEC_NO_AVX512").is_some() {
            all.into_iter().find(|i| *i != Isa::Avx512).unwrap()
        } else {
            all[0]
        }
    })
}

/// Whether this CPU has AVX-512 VNNI (`vpdpbusd`), for the quantized product's int8
/// activations; `SUBSPEC_NO_VNNI` (any value) says no (to run its f32 kernels instead).
pub(crate) fn vnni() -> bool {
    use std::sync::OnceLock;
    static VNNI: OnceLock<bool> = OnceLock::new();
    *VNNI.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let has = supported_isas().contains(&Isa::Avx512) && is_x86_feature_detected!("avx512vnni");
        #[cfg(not(target_arch = "x86_64"))]
        let has = false;
        has && std::env::var_os("SUBSPEC_NO_VNNI").is_none()
    })
}

/// Whether the quantized product may take int8 activations at all; `SUBSPEC_NO_INT8` (any
/// value) says no (to run its f32 kernels on every ISA).
pub(crate) fn int8() -> bool {
    use std::sync::OnceLock;
    static INT8: OnceLock<bool> = OnceLock::new();
    *INT8.get_or_init(|| std::env::var_os("SUBSPEC_NO_INT8").is_none())
}

/// Every ISA this CPU can run, best first (always ends with [`Isa::Portable`]).
pub(crate) fn supported_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if avx2
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
        {
            v.push(Isa::Avx512);
        }
        if avx2 {
            v.push(Isa::Avx2);
        }
    }
    v.push(Isa::Portable);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_layouts_are_permutations() {
        // a tile of 3 rows of 64: every element lands on its own place, in both layouts;
        // with 16 lanes a block's 16 are adjacent, with 8 its two halves are apart
        for pass in [8, 16] {
            let mut seen = [false; 3 * 64];
            for r in 0..3 {
                for i in 0..64 {
                    let at = packed_at(i, r, 3, 64, pass);
                    assert!(!seen[at], "{pass}: {r} {i}");
                    seen[at] = true;
                }
            }
        }
        assert_eq!(packed_at(17, 1, 3, 64, 16), (3 + 1) * 16 + 1);
        assert_eq!(packed_at(25, 1, 3, 64, 8), ((4 + 1) * 3 + 1) * 8 + 1);
    }

    #[test]
    fn isa_list_ends_portable() {
        let all = supported_isas();
        assert_eq!(*all.last().unwrap(), Isa::Portable);
        assert!(all.contains(&isa()));
    }
}
