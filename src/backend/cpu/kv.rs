//! The CPU backend's KV cache: per layer and KV head, keys (rotary applied) in tiles of 8
//! slots ([`attn::key_at`]) and values slot after slot, stored as f32, f16 or bf16
//! ([`KvDtype`]). Values are rounded to the cache's type as they are written and widened
//! back to f32 exactly as attention reads them.

use half::{bf16, f16, vec::HalfBitsVecExt};

use super::attn::{self, TILE};
use crate::backend::KvDtype;
use crate::error::{Error, Result};

/// An element type of the cache.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// `len` zeros from the allocator's zeroed memory (never written here, so the pages
    /// of a large allocation stay untouched until used).
    fn zeroed(len: usize) -> Vec<Self>;
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
    /// The 16 values at `p` as f32 (exact).
    ///
    /// # Safety
    /// The CPU has AVX-512F; 16 values are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
    /// The 8 values at `lo` then the 8 at `hi` as f32 (exact), in one register.
    ///
    /// # Safety
    /// The CPU has AVX-512F; 8 values are readable at `lo` and at `hi`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8x2(lo: *const Self, hi: *const Self) -> std::arch::x86_64::__m512;
}

/// The 8 two-byte values at `lo` then the 8 at `hi`, as one 256-bit register.
///
/// # Safety
/// 16 bytes are readable at `lo` and at `hi`; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halves<T>(lo: *const T, hi: *const T) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu2_m128i(hi.cast(), lo.cast()) }
}

/// 16 bf16 values (their bits in `h`) as f32: each is the upper half of the f32 with the
/// same value.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bf16_widen16(h: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: register operations only (the caller's contract).
    unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))) }
}

impl KvElem for f32 {
    fn zeroed(len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: 16 floats are readable at `p` (the caller's contract).
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8x2(lo: *const f32, hi: *const f32) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: 8 floats are readable at `lo` and `hi`; the CPU has AVX-512F.
        unsafe {
            let l = _mm512_castps256_ps512(_mm256_loadu_ps(lo));
            let h = _mm256_castps_pd(_mm256_loadu_ps(hi));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(l), h))
        }
    }
}

impl KvElem for f16 {
    fn zeroed(len: usize) -> Vec<f16> {
        vec![0u16; len].reinterpret_into()
    }
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const f16) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: 32 bytes are readable at `p`; the CPU has AVX-512F (the caller's contract).
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8x2(lo: *const f16, hi: *const f16) -> std::arch::x86_64::__m512 {
        // SAFETY: 16 bytes are readable at `lo` and `hi`; the CPU has AVX-512F.
        unsafe { std::arch::x86_64::_mm512_cvtph_ps(halves(lo, hi)) }
    }
}

impl KvElem for bf16 {
    fn zeroed(len: usize) -> Vec<bf16> {
        vec![0u16; len].reinterpret_into()
    }
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
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const bf16) -> std::arch::x86_64::__m512 {
        // SAFETY: 32 bytes are readable at `p`; the CPU has AVX-512F (the caller's contract).
        unsafe { bf16_widen16(std::arch::x86_64::_mm256_loadu_si256(p.cast())) }
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8x2(lo: *const bf16, hi: *const bf16) -> std::arch::x86_64::__m512 {
        // SAFETY: 16 bytes are readable at `lo` and `hi`; the CPU has AVX-512F.
        unsafe { bf16_widen16(halves(lo, hi)) }
    }
}

/// Keys and values of every layer in one element type, head after head ([`Layout`]):
/// attention reads each head's keys and values as contiguous runs.
pub(crate) struct Planes<T> {
    pub k: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
}

impl<T: KvElem> Planes<T> {
    /// Every layer's planes of `len` values, zeroed by the allocator: pages never written
    /// are not touched, so they are not resident (the cache takes memory as slots fill).
    fn new(layers: usize, lay: Layout) -> Self {
        let len = |per_head| lay.kv_heads * per_head;
        Planes {
            k: (0..layers)
                .map(|_| T::zeroed(len(lay.k_head_len())))
                .collect(),
            v: (0..layers)
                .map(|_| T::zeroed(len(lay.v_head_len())))
                .collect(),
        }
    }

    fn write(&mut self, layer: usize, at: usize, k: &[f32], v: &[f32], lay: Layout) {
        let hd = lay.head_dim;
        let (ks, vs) = (&mut self.k[layer], &mut self.v[layer]);
        for (r, (kr, vr)) in k
            .chunks_exact(lay.kv_dim())
            .zip(v.chunks_exact(lay.kv_dim()))
            .enumerate()
        {
            let s = at + r;
            for g in 0..lay.kv_heads {
                let kh = &mut ks[lay.k_head(g)];
                for (i, &x) in kr[g * hd..][..hd].iter().enumerate() {
                    kh[attn::key_at(s, i, hd)] = T::from_f32(x);
                }
                let vh = &mut vs[lay.v_head(g)][s * hd..][..hd];
                for (d, &x) in vh.iter_mut().zip(&vr[g * hd..][..hd]) {
                    *d = T::from_f32(x);
                }
            }
        }
    }

    fn compact(&mut self, src: &[usize], dst_first: usize, lay: Layout) {
        let hd = lay.head_dim;
        let moves = src
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, dst_first + i))
            .filter(|(s, d)| s != d);
        for (ks, vs) in self.k.iter_mut().zip(self.v.iter_mut()) {
            for g in 0..lay.kv_heads {
                let (kh, vh) = (&mut ks[lay.k_head(g)], &mut vs[lay.v_head(g)]);
                for (s, d) in moves.clone() {
                    for i in 0..hd {
                        kh[attn::key_at(d, i, hd)] = kh[attn::key_at(s, i, hd)];
                    }
                    vh.copy_within(s * hd..(s + 1) * hd, d * hd);
                }
            }
        }
    }
}

/// Where each head's keys and values lie in a layer's planes: head `g`'s key tiles at
/// [`Layout::k_head`] (the capacity rounded up to whole tiles), its values at
/// [`Layout::v_head`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl Layout {
    fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Values of one head's key tiles.
    fn k_head_len(&self) -> usize {
        self.capacity.div_ceil(TILE) * TILE * self.head_dim
    }

    /// Values of one head's values.
    fn v_head_len(&self) -> usize {
        self.capacity * self.head_dim
    }

    /// Head `g`'s key tiles in a layer's K plane.
    pub fn k_head(&self, g: usize) -> std::ops::Range<usize> {
        let n = self.k_head_len();
        g * n..(g + 1) * n
    }

    /// Head `g`'s values in a layer's V plane.
    pub fn v_head(&self, g: usize) -> std::ops::Range<usize> {
        let n = self.v_head_len();
        g * n..(g + 1) * n
    }
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
    pub(crate) layout: Layout,
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
    /// Storage for `layers` layers of `kv_heads` heads of `head_dim` values per slot, up
    /// to `capacity` slots, of `dtype` values (memory is taken as slots are written).
    pub(crate) fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDtype,
    ) -> Self {
        let layout = Layout {
            kv_heads,
            head_dim,
            capacity,
        };
        let store = match dtype {
            KvDtype::F32 => Store::F32(Planes::new(layers, layout)),
            KvDtype::F16 => Store::F16(Planes::new(layers, layout)),
            KvDtype::Bf16 => Store::Bf16(Planes::new(layers, layout)),
        };
        CpuKv { store, layout }
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        match self.store {
            Store::F32(_) => KvDtype::F32,
            Store::F16(_) => KvDtype::F16,
            Store::Bf16(_) => KvDtype::Bf16,
        }
    }

    /// Layers in the cache.
    pub(crate) fn layers(&self) -> usize {
        with_planes!(&self.store, p => p.k.len())
    }

    /// Writes `k`, `v` (`rows` slots of `kv_dim` values each) of `layer` at slot `first`,
    /// rounded to the cache's type.
    pub(crate) fn write(&mut self, layer: usize, first: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (d, cap) = (self.layout.kv_dim(), self.layout.capacity);
        let rows = k.len() / d.max(1);
        if first + rows > cap
            || layer >= self.layers()
            || k.len() != v.len()
            || !k.len().is_multiple_of(d)
        {
            return Err(Error::internal(format!(
                "kv_write of {} values at slot {first} in layer {layer}: the cache has {cap} \
                 slots of {d} values and {} layers",
                k.len(),
                self.layers()
            )));
        }
        let lay = self.layout;
        with_planes!(&mut self.store, p => p.write(layer, first, k, v, lay));
        Ok(())
    }

    /// The keys, then the values, of every head at `slot` of `layer`, widened to f32.
    #[cfg(test)]
    #[allow(clippy::useless_conversion)] // f32 planes too
    pub(crate) fn slot(&self, layer: usize, slot: usize) -> Vec<f32> {
        let lay = self.layout;
        let hd = lay.head_dim;
        with_planes!(&self.store, p => {
            let (k, v) = (&p.k[layer], &p.v[layer]);
            let keys = (0..lay.kv_heads).flat_map(|g| {
                (0..hd).map(move |i| f32::from(k[lay.k_head(g)][attn::key_at(slot, i, hd)]))
            });
            let values = (0..lay.kv_heads)
                .flat_map(|g| (0..hd).map(move |i| f32::from(v[lay.v_head(g)][slot * hd + i])));
            keys.chain(values).collect()
        })
    }

    /// Moves slot `src[i]` to `dst_first + i` in every layer.
    pub(crate) fn compact(&mut self, src: &[usize], dst_first: usize) -> Result<()> {
        let Some(&last) = src.iter().max() else {
            return Ok(());
        };
        let lay = self.layout;
        if last >= lay.capacity || dst_first + src.len() > lay.capacity {
            return Err(Error::internal(format!(
                "kv_compact from slot {last}: the cache has {} slots",
                lay.capacity
            )));
        }
        with_planes!(&mut self.store, p => p.compact(src, dst_first, lay));
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
        #[cfg(target_arch = "x86_64")]
        if crate::util::isa::isa() == crate::util::isa::Isa::Avx512 {
            fn wide<T: KvElem>(xs: &[f32]) {
                let v: Vec<T> = xs.iter().map(|&x| T::from_f32(x)).collect();
                let want: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
                let (mut all, mut two) = ([0f32; 16], [0f32; 16]);
                // SAFETY: AVX-512F (the ISA), 32 values: 16 from 0, 8 from 0 and 8 from 24.
                unsafe {
                    use std::arch::x86_64::_mm512_storeu_ps;
                    _mm512_storeu_ps(all.as_mut_ptr(), T::load16(v.as_ptr()));
                    let (lo, hi) = (v.as_ptr(), v.as_ptr().add(24));
                    _mm512_storeu_ps(two.as_mut_ptr(), T::load8x2(lo, hi));
                }
                assert_eq!(all[..], want[..16]);
                assert_eq!(two[..8], want[..8]);
                assert_eq!(two[8..], want[24..]);
            }
            let xs: Vec<f32> = (0..32).map(|i| (i as f32 - 13.3) * 7.77).collect();
            wide::<f32>(&xs);
            wide::<f16>(&xs);
            wide::<bf16>(&xs);
        }
    }

    #[test]
    fn writes_round_and_compaction_moves_every_layer() {
        // 2 layers of 2 KV heads of 2 values, 8 slots
        let mut kv = CpuKv::new(2, 2, 2, 8, KvDtype::F16);
        let k: Vec<f32> = (0..12).map(|i| i as f32 + 0.1).collect();
        let v: Vec<f32> = (0..12).map(|i| -(i as f32) - 0.1).collect();
        kv.write(1, 2, &k, &v).unwrap();
        kv.compact(&[3, 4], 0).unwrap();
        let Store::F16(p) = &kv.store else {
            panic!("f16 planes")
        };
        let half = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
        // slots 3 and 4 (k[4..8], k[8..12]: 2 values of each head) moved to 0 and 1
        let lay = kv.layout;
        let key = |g: usize, s: usize| -> Vec<f16> {
            (0..2)
                .map(|i| p.k[1][lay.k_head(g)][attn::key_at(s, i, 2)])
                .collect()
        };
        assert_eq!(lay.k_head(1), 16..32, "whole tiles of 8 slots");
        assert_eq!(key(0, 0), half(&[4.1, 5.1]));
        assert_eq!(key(1, 0), half(&[6.1, 7.1]));
        assert_eq!(key(0, 1), half(&[8.1, 9.1]));
        assert_eq!(key(1, 1), half(&[10.1, 11.1]));
        assert_eq!(p.v[1][lay.v_head(1)][8..10], half(&v[10..12])[..]);
        assert_eq!(p.v[1][lay.v_head(1)][2..4], half(&v[10..12])[..]);
        assert_eq!(p.v[0][..], [f16::ZERO; 32]);
        assert!(kv.write(0, 6, &k, &v).is_err(), "past the capacity");
        assert!(kv.write(2, 0, &k[..4], &v[..4]).is_err(), "past the layers");
        assert_eq!(kv.dtype(), KvDtype::F16);
    }
}
