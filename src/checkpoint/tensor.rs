//! Tensors in host memory: element types, aligned buffers, and read-only views into a
//! memory-mapped checkpoint file or a buffer we own.

use std::sync::Arc;

use memmap2::Mmap;

use super::gguf::{dequantize_row, GgmlType};

/// Element type of a stored tensor: a float type, or one of GGUF's block-quantized ones
/// (groups of 32 or 256 weights sharing scales; a row is a whole number of blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// A ggml block-quantized type (Q8_0, Q4_K, ...), read through its dequantizer.
    Quant(GgmlType),
}

impl DType {
    /// Bytes per element of a float type (`None` for the block-quantized ones).
    pub fn elem_bytes(self) -> Option<usize> {
        match self {
            DType::F32 => Some(4),
            DType::F16 | DType::BF16 => Some(2),
            DType::Quant(_) => None,
        }
    }

    /// Bytes per element of a float type; block-quantized types have none (a bug to ask).
    pub fn size(self) -> usize {
        self.elem_bytes()
            .expect("a block-quantized type has no per-element size")
    }

    /// Bytes of `n` elements (`None`: not a whole number of blocks, or an overflow).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        match self {
            DType::Quant(t) => t.bytes_for(n),
            d => n.checked_mul(d.size()),
        }
    }

    /// Whether this is a block-quantized type.
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Quant(_))
    }

    /// The name as GGUF and llama.cpp write it (`F16`, `Q4_K`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Quant(t) => t.name(),
        }
    }

    /// The type of a GGUF tensor.
    pub(crate) fn from_ggml(t: GgmlType) -> DType {
        match t {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            GgmlType::BF16 => DType::BF16,
            q => DType::Quant(q),
        }
    }
}

/// `src` (a whole number of rows of `dtype`) as f32 in `out`: exact for the float types,
/// bit-identical to gguf-py's dequantizer for the quantized ones.
pub(crate) fn to_f32(dtype: DType, src: &[u8], out: &mut [f32]) {
    match dtype {
        DType::Quant(t) => {
            dequantize_row(t, src, out).expect("callers pass whole rows of the tensor's type")
        }
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes(b.try_into().unwrap());
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
    }
}

/// A 4 KiB-aligned heap buffer (what O_DIRECT reads need).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only reads (`as_slice`); writing needs `&mut self`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// Alignment of every buffer.
    pub const ALIGN: usize = 4096;

    /// A zeroed buffer of `len` bytes (at least one block).
    pub fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len.max(Self::ALIGN), Self::ALIGN)
            .expect("buffer layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf {
            ptr,
            len: len.max(Self::ALIGN),
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout =
            std::alloc::Layout::from_size_align(self.len, Self::ALIGN).expect("buffer layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

/// Where a tensor's bytes live: a memory-mapped checkpoint file, or a buffer we own
/// (resident weights read once, or a staging buffer of the streamer).
pub enum Storage {
    /// A read-only map of a checkpoint file.
    Mapped(Mmap),
    /// An owned, aligned buffer.
    Owned(AlignedBuf),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(b) => b.as_slice(),
        }
    }
}

/// A read-only tensor in host memory (a view into a mapped file or an owned buffer).
#[derive(Clone)]
pub struct HostTensor {
    /// The tensor's name in the checkpoint.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    map: Arc<Storage>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HostTensor({}, {:?}, {:?})",
            self.name, self.dtype, self.shape
        )
    }
}

impl HostTensor {
    /// A view of `len` bytes at `start` of `storage`.
    pub fn view(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        storage: Arc<Storage>,
        start: usize,
        len: usize,
    ) -> HostTensor {
        assert!(
            start + len <= storage.len()
                && Some(len) == dtype.bytes_for(shape.iter().product::<usize>())
        );
        HostTensor {
            name: name.to_string(),
            dtype,
            shape,
            map: storage,
            start,
            len,
        }
    }

    /// An owned f32 tensor of `values` (row-major, `shape` elements).
    pub fn from_f32(name: &str, shape: Vec<usize>, values: &[f32]) -> HostTensor {
        let len = values.len() * 4;
        let mut buf = AlignedBuf::new(len);
        for (d, v) in buf.as_mut_slice().chunks_exact_mut(4).zip(values) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        Self::view(
            name,
            DType::F32,
            shape,
            Arc::new(Storage::Owned(buf)),
            0,
            len,
        )
    }

    /// Where the bytes live.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.map
    }

    /// Byte offset of the data inside its storage (inside the file, when mapped).
    pub fn offset(&self) -> usize {
        self.start
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (the last dimension).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype
            .bytes_for(self.cols())
            .expect("rows are whole blocks (checked when the tensor was made)")
    }

    /// A view of the first `rows` rows of a matrix (no copy).
    ///
    /// # Panics
    /// If the tensor is not a matrix or has fewer rows.
    pub fn first_rows(&self, rows: usize) -> HostTensor {
        self.row_range(0, rows)
    }

    /// Rows `start..start + rows` of a matrix, as a view of the same bytes (rows of a
    /// block-quantized matrix are whole blocks).
    ///
    /// # Panics
    /// If the tensor is not a matrix or has fewer rows.
    pub fn row_range(&self, start: usize, rows: usize) -> HostTensor {
        assert!(
            self.shape.len() == 2 && start + rows <= self.shape[0],
            "row_range({start}, {rows}) of {:?}",
            self.shape
        );
        HostTensor {
            name: self.name.clone(),
            dtype: self.dtype,
            shape: vec![rows, self.shape[1]],
            map: self.map.clone(),
            start: self.start + start * self.row_bytes(),
            len: rows * self.row_bytes(),
        }
    }

    /// Element `i` converted to f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        let b = self.bytes();
        match self.dtype {
            DType::Quant(t) => {
                let (n, bb) = (t.block_size(), t.block_bytes());
                let mut block = [0f32; 256];
                let first = i / n;
                to_f32(
                    self.dtype,
                    &b[first * bb..(first + 1) * bb],
                    &mut block[..n],
                );
                block[i % n]
            }
            d => {
                let e = d.size();
                let mut out = [0f32];
                to_f32(d, &b[e * i..e * (i + 1)], &mut out);
                out[0]
            }
        }
    }

    /// Row `r` (of the last dimension) converted to f32 into `out` (`cols()` long).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        to_f32(self.dtype, &self.bytes()[r * rb..(r + 1) * rb], out);
    }

    /// All elements converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.numel()];
        to_f32(self.dtype, self.bytes(), &mut out);
        out
    }
}
