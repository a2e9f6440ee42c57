//! The CPU backend's KV cache: per layer, keys (rotary applied) and values `[slots,
//! kv_dim]`, stored as f32, f16 or bf16 ([`KvDtype`]). Values are rounded to the cache's
//! type as they are written and widened back to f32 exactly as attention reads them.

use half::{bf16, f16};

use crate::backend::KvDtype;
use crate::error::{Error, Result};

/// An element type of the cache.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    const ZERO: Self;
    /// `x` rounded to this type (to nearest, ties to even).
    fn from_f32(x: f32) -> Self;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
    /// The 8 values at `p` as f32 (exact).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; 8 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl KvElem for f32 {
    const ZERO: f32 = 0.0;
    fn from_f32(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: 8 floats are readable at `p` (the caller's contract).
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl KvElem for f16 {
    const ZERO: f16 = f16::ZERO;
    fn from_f32(x: f32) -> f16 {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: 16 bytes are readable at `p`; the CPU has F16C (the caller's contract).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
}

impl KvElem for bf16 {
    const ZERO: bf16 = bf16::ZERO;
    fn from_f32(x: f32) -> bf16 {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const bf16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: 16 bytes are readable at `p`; the CPU has AVX2 (the caller's contract).
        // A bf16 is the upper half of the f32 with the same value.
        unsafe {
            let w = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
        }
    }
}

/// Keys and values of every layer in one element type.
pub(crate) struct Planes<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
}

/// The planes, in the cache's type.
pub(crate) enum Store {
    F32(Planes<f32>),
    F16(Planes<f16>),
    Bf16(Planes<bf16>),
}

/// Keys and values of all layers of one sequence.
pub struct CpuKv {
    pub(crate) store: Store,
    pub(crate) kv_dim: usize,
    pub(crate) capacity: usize,
}

/// Grows one layer's K or V store to `len` values (zeros). The first growth reserves the
/// whole `capacity` at once, so the store is never reallocated: a Vec that doubled as the
/// context grew would hold up to twice what the planner counted for the KV cache, and
/// copy it. Pages past `len` are reserved but never touched, so they are not resident.
fn grow<T: KvElem>(store: &mut Vec<T>, len: usize, capacity: usize) {
    if store.len() < len {
        if store.capacity() < len {
            store.reserve_exact(capacity.max(len) - store.len());
        }
        store.resize(len, T::ZERO);
    }
}

impl<T: KvElem> Planes<T> {
    fn new(layers: usize) -> Self {
        Planes {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
        }
    }

    fn write(&mut self, layer: usize, at: usize, k: &[f32], v: &[f32], capacity: usize) {
        let end = at + k.len();
        for (store, src) in [(&mut self.k[layer], k), (&mut self.v[layer], v)] {
            grow(store, end, capacity);
            for (d, &s) in store[at..end].iter_mut().zip(src) {
                *d = T::from_f32(s);
            }
        }
    }

    fn compact(&mut self, src: &[usize], dst_first: usize, d: usize, capacity: usize) {
        let last = src.iter().max().copied().unwrap_or(0);
        for store in self.k.iter_mut().chain(self.v.iter_mut()) {
            // Slots never written (this cache grows as it is written) read as zeros, as
            // on a device where the whole cache is allocated up front.
            grow(store, (last + 1) * d, capacity);
            for (i, &s) in src.iter().enumerate() {
                let dst = dst_first + i;
                if s != dst {
                    store.copy_within(s * d..(s + 1) * d, dst * d);
                }
            }
        }
    }
}

/// Runs `$body` with `$p` bound to the store's planes, whatever their type.
macro_rules! with_planes {
    ($store:expr, $p:ident => $body:expr) => {
        match $store {
            $crate::backend::cpu::kv::Store::F32($p) => $body,
            $crate::backend::cpu::kv::Store::F16($p) => $body,
            $crate::backend::cpu::kv::Store::Bf16($p) => $body,
        }
    };
}
pub(crate) use with_planes;

impl CpuKv {
    /// Empty storage for `layers` layers of `kv_dim` values per slot, up to `capacity`
    /// slots, of `dtype` values (memory is taken as slots are written).
    pub(crate) fn new(layers: usize, kv_dim: usize, capacity: usize, dtype: KvDtype) -> Self {
        let store = match dtype {
            KvDtype::F32 => Store::F32(Planes::new(layers)),
            KvDtype::F16 => Store::F16(Planes::new(layers)),
            KvDtype::Bf16 => Store::Bf16(Planes::new(layers)),
        };
        CpuKv {
            store,
            kv_dim,
            capacity,
        }
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        match self.store {
            Store::F32(_) => KvDtype::F32,
            Store::F16(_) => KvDtype::F16,
            Store::Bf16(_) => KvDtype::Bf16,
        }
    }

    fn layers(&self) -> usize {
        with_planes!(&self.store, p => p.k.len())
    }

    /// Writes `k`, `v` (`rows` slots of `kv_dim` values each) of `layer` at slot `first`,
    /// rounded to the cache's type.
    pub(crate) fn write(&mut self, layer: usize, first: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let d = self.kv_dim;
        let rows = k.len() / d;
        if first + rows > self.capacity
            || layer >= self.layers()
            || k.len() != v.len()
            || !k.len().is_multiple_of(d)
        {
            return Err(Error::internal(format!(
                "kv_write of {rows} slots at {first} in layer {layer}: the cache has {} slots \
                 and {} layers",
                self.capacity,
                self.layers()
            )));
        }
        let cap = self.capacity * d;
        with_planes!(&mut self.store, p => p.write(layer, first * d, k, v, cap));
        Ok(())
    }

    /// Moves slot `src[i]` to `dst_first + i` in every layer.
    pub(crate) fn compact(&mut self, src: &[usize], dst_first: usize) -> Result<()> {
        let Some(&last) = src.iter().max() else {
            return Ok(());
        };
        if last >= self.capacity || dst_first + src.len() > self.capacity {
            return Err(Error::internal(format!(
                "kv_compact from slot {last}: the cache has {} slots",
                self.capacity
            )));
        }
        let (d, cap) = (self.kv_dim, self.capacity * self.kv_dim);
        with_planes!(&mut self.store, p => p.compact(src, dst_first, d, cap));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_to_nearest_and_widen_exactly() {
        for x in [1.0f32, -2.71, 65504.0, 1e-8, 0.1, 1e30] {
            assert_eq!(
                f16::from_f32(x).to_f32(),
                <f16 as KvElem>::from_f32(x).to_f32()
            );
            assert_eq!(
                bf16::from_f32(x).to_f32(),
                <bf16 as KvElem>::from_f32(x).to_f32()
            );
        }
        #[cfg(target_arch = "x86_64")]
        if crate::util::isa::isa() != crate::util::isa::Isa::Portable {
            let xs: Vec<f32> = (0..8).map(|i| (i as f32 - 3.3) * 7.77).collect();
            let h: Vec<f16> = xs.iter().map(|&x| f16::from_f32(x)).collect();
            let b: Vec<bf16> = xs.iter().map(|&x| bf16::from_f32(x)).collect();
            let (mut wh, mut wb) = ([0f32; 8], [0f32; 8]);
            // SAFETY: AVX2 and F16C (a non-portable ISA), 8 values each.
            unsafe {
                use std::arch::x86_64::_mm256_storeu_ps;
                _mm256_storeu_ps(wh.as_mut_ptr(), f16::load8(h.as_ptr()));
                _mm256_storeu_ps(wb.as_mut_ptr(), bf16::load8(b.as_ptr()));
            }
            for i in 0..8 {
                assert_eq!(wh[i], h[i].to_f32());
                assert_eq!(wb[i], b[i].to_f32());
            }
        }
    }

    #[test]
    fn writes_round_and_compaction_moves_every_layer() {
        let mut kv = CpuKv::new(2, 4, 8, KvDtype::F16);
        let k: Vec<f32> = (0..12).map(|i| i as f32 + 0.1).collect();
        let v: Vec<f32> = (0..12).map(|i| -(i as f32) - 0.1).collect();
        kv.write(1, 2, &k, &v).unwrap();
        kv.compact(&[3, 4], 0).unwrap();
        let Store::F16(p) = &kv.store else {
            panic!("f16 planes")
        };
        assert_eq!(
            p.k[1][..8],
            k[4..12]
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect::<Vec<_>>()[..]
        );
        assert_eq!(p.v[0][..8], [f16::ZERO; 8]);
        assert!(kv.write(0, 6, &k, &v).is_err(), "past the capacity");
        assert!(kv.write(2, 0, &k[..4], &v[..4]).is_err(), "past the layers");
        assert_eq!(kv.dtype(), KvDtype::F16);
    }
}
