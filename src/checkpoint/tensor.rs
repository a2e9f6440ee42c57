//! Tensors in host memory: element types, aligned buffers, and read-only views into a
//! memory-mapped checkpoint file or a buffer we own.

use std::sync::Arc;

use memmap2::Mmap;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// IEEE single precision.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
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
            start + len <= storage.len() && len == shape.iter().product::<usize>() * dtype.size()
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

    /// Element `i` converted to f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()),
            DType::F16 => {
                half::f16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
            }
            DType::BF16 => {
                half::bf16::from_bits(u16::from_le_bytes([b[2 * i], b[2 * i + 1]])).to_f32()
            }
        }
    }

    /// All elements converted to f32.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.numel()).map(|i| self.get_f32(i)).collect()
    }
}
