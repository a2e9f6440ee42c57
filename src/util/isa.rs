//! Which SIMD kernels this CPU runs: detected once, shared by the matrix products, the
//! quantizer and the fused low-bit product. AVX-512 needs AVX2/FMA/F16C and
//! AVX-512 F/BW/VL; `SUBSPEC_NO_AVX512` (any value) forbids it (to test the AVX2 path).

/// Which SIMD code this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
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
    fn isa_list_ends_portable() {
        let all = supported_isas();
        assert_eq!(*all.last().unwrap(), Isa::Portable);
        assert!(all.contains(&isa()));
    }
}
