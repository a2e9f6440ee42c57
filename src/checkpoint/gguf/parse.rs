//! The GGUF byte format, parsed and validated: header (magic `GGUF`, version 2 or 3,
//! tensor and metadata counts), metadata key/values of every value type (nested arrays
//! included), tensor infos, `general.alignment`, and where each tensor's data lies.
//!
//! [`parse_bytes`] is a pure function of the bytes, the entry point a fuzz target calls.
//! It trusts nothing: every count and length is checked against the bytes that remain
//! *before* anything is allocated for it (a file claiming 2^60 tensors or a 2^40-byte
//! string is an error, not an allocation), nesting is bounded, every size is computed
//! with checked arithmetic, and every tensor's data must be aligned and inside the file.
//! Each error names the file and the field, key or tensor, and is `InvalidModel`
//! (malformed) or `Unsupported` (well-formed but not something we read: version 1, a
//! big-endian file, a tensor type outside [`GgmlType::ALL`]).

use std::collections::{HashMap, HashSet};

use super::ggml::{self, GgmlType, TypeRefusal};
use crate::error::{Error, Result};

/// The magic at byte 0.
pub(crate) const MAGIC: &[u8; 4] = b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub(crate) const MAX_DIMS: usize = 4;
/// Deepest nesting of metadata arrays accepted (arrays of arrays of ...).
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;

/// The type of a metadata value (`gguf_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    Str,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The name used in error messages.
    pub(crate) fn name(self) -> &'static str {
        use ValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            Str => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Fewest bytes a value of this type takes (a string's length, an array's element
    /// type and count).
    fn min_bytes(self) -> usize {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | Str => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Array),
}

/// A metadata array: elements of one type (`Array::Array`: an array of arrays).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::enum_variant_names)]
pub(crate) enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    Array(Vec<Array>),
}

impl Value {
    /// The value's type.
    pub(crate) fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::Array(_) => ValueType::Array,
        }
    }

    /// The type for error messages: `u32`, `array of string`, ...
    pub(crate) fn type_name(&self) -> String {
        match self {
            Value::Array(a) => a.type_name(),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value of an integer of any width, or `None`.
    pub(crate) fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            _ => return None,
        })
    }
}

impl Array {
    /// Number of elements.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::Str(v) => v.len(),
            Array::Array(v) => v.len(),
        }
    }

    /// The element type.
    pub(crate) fn elem_type(&self) -> ValueType {
        match self {
            Array::U8(_) => ValueType::U8,
            Array::I8(_) => ValueType::I8,
            Array::U16(_) => ValueType::U16,
            Array::I16(_) => ValueType::I16,
            Array::U32(_) => ValueType::U32,
            Array::I32(_) => ValueType::I32,
            Array::U64(_) => ValueType::U64,
            Array::I64(_) => ValueType::I64,
            Array::F32(_) => ValueType::F32,
            Array::F64(_) => ValueType::F64,
            Array::Bool(_) => ValueType::Bool,
            Array::Str(_) => ValueType::Str,
            Array::Array(_) => ValueType::Array,
        }
    }

    /// `array of u32`, ...
    pub(crate) fn type_name(&self) -> String {
        format!("array of {}", self.elem_type().name())
    }

    /// The elements as i64 when the array holds integers that all fit.
    pub(crate) fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy + TryInto<i64>>(v: &[T]) -> Option<Vec<i64>> {
            v.iter().map(|&x| x.try_into().ok()).collect()
        }
        match self {
            Array::U8(v) => conv(v),
            Array::I8(v) => conv(v),
            Array::U16(v) => conv(v),
            Array::I16(v) => conv(v),
            Array::U32(v) => conv(v),
            Array::I32(v) => conv(v),
            Array::U64(v) => conv(v),
            Array::I64(v) => conv(v),
            _ => None,
        }
    }
}

/// The metadata key/values of a GGUF file, in file order, with typed accessors whose
/// errors name the file, the key and the type found.
///
/// `get_*` require the key (missing: an `InvalidModel` error "missing required metadata
/// key"); `opt_*` return `Ok(None)` when it is absent. Both fail on a value of the wrong
/// type. The integer accessors take an integer of any stored width whose value fits
/// (converters disagree on u32 vs u64 vs i32); the float ones take f32 or f64.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    file: String,
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
}

#[allow(dead_code)] // the complete typed accessor family; the loader reads a subset
impl Metadata {
    /// The file the metadata was read from (as named in errors).
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no keys.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key/values in file order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn missing(&self, key: &str) -> Error {
        Error::invalid_model(format!(
            "{}: missing required metadata key `{key}`",
            self.file
        ))
    }

    fn wrong(&self, key: &str, v: &Value, want: &str) -> Error {
        Error::invalid_model(format!(
            "{}: metadata key `{key}` is {}, expected {want}",
            self.file,
            v.type_name()
        ))
    }

    fn opt_int<T: TryFrom<i128>>(&self, key: &str, want: &str) -> Result<Option<T>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n = v.as_int().ok_or_else(|| self.wrong(key, v, want))?;
        T::try_from(n).map(Some).map_err(|_| {
            Error::invalid_model(format!(
                "{}: metadata key `{key}` = {n} ({}) does not fit {want}",
                self.file,
                v.type_name()
            ))
        })
    }

    /// `key` as u32 (absent: `None`).
    pub(crate) fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.opt_int(key, "u32")
    }

    /// `key` as u32, required.
    pub(crate) fn get_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as u64 (absent: `None`).
    pub(crate) fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.opt_int(key, "u64")
    }

    /// `key` as u64, required.
    pub(crate) fn get_u64(&self, key: &str) -> Result<u64> {
        self.opt_u64(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as i64 (absent: `None`).
    pub(crate) fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.opt_int(key, "i64")
    }

    /// `key` as i64, required.
    pub(crate) fn get_i64(&self, key: &str) -> Result<i64> {
        self.opt_i64(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as usize (absent: `None`).
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt_int(key, "usize")
    }

    /// `key` as usize, required.
    pub(crate) fn get_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as f64, from an f32 (exactly) or an f64 (absent: `None`).
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x as f64)),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.wrong(key, v, "f32 or f64")),
        }
    }

    /// `key` as f64, required.
    pub(crate) fn get_f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as f32, from an f32 or an f64 (rounded) (absent: `None`).
    pub(crate) fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            Some(Value::F32(x)) => Ok(Some(*x)),
            _ => Ok(self.opt_f64(key)?.map(|x| x as f32)),
        }
    }

    /// `key` as f32, required.
    pub(crate) fn get_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as bool (absent: `None`).
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, v, "bool")),
        }
    }

    /// `key` as bool, required.
    pub(crate) fn get_bool(&self, key: &str) -> Result<bool> {
        self.opt_bool(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as a string (absent: `None`).
    pub(crate) fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, v, "string")),
        }
    }

    /// `key` as a string, required.
    pub(crate) fn get_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as an array of any element type (absent: `None`).
    pub(crate) fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(key, v, "array")),
        }
    }

    /// `key` as an array of any element type, required.
    pub(crate) fn get_array(&self, key: &str) -> Result<&Array> {
        self.opt_array(key)?.ok_or_else(|| self.missing(key))
    }

    /// `key` as an array of strings, required (`tokenizer.ggml.tokens`).
    pub(crate) fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            Array::Str(v) => Ok(v),
            a => Err(Error::invalid_model(format!(
                "{}: metadata key `{key}` is {}, expected array of string",
                self.file,
                a.type_name()
            ))),
        }
    }

    /// `key` as an array of f32, required (`tokenizer.ggml.scores`).
    pub(crate) fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.get_array(key)? {
            Array::F32(v) => Ok(v.clone()),
            a => Err(Error::invalid_model(format!(
                "{}: metadata key `{key}` is {}, expected array of f32",
                self.file,
                a.type_name()
            ))),
        }
    }

    /// `key` as an array of integers of any width that all fit i64, required
    /// (`tokenizer.ggml.token_type`).
    pub(crate) fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        let a = self.get_array(key)?;
        a.to_i64_vec().ok_or_else(|| {
            Error::invalid_model(format!(
                "{}: metadata key `{key}` is {}, expected an array of integers",
                self.file,
                a.type_name()
            ))
        })
    }
}

/// One tensor info, validated: a supported type, at most [`MAX_DIMS`] dimensions, a row
/// length that is a whole number of blocks, data aligned and inside the file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorInfo {
    /// The tensor's name.
    pub(crate) name: String,
    /// Its type.
    pub(crate) ggml_type: GgmlType,
    /// Shape in row-major (Hugging Face) order, outermost first: ggml's `ne` reversed,
    /// so a linear weight is `[rows, cols]` = `[out_features, in_features]` and the
    /// last entry is the row length (`ne[0]`).
    pub(crate) shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub(crate) offset: usize,
    /// Bytes of data.
    pub(crate) len: usize,
}

impl TensorInfo {
    /// Number of elements.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A parsed GGUF file: what [`parse_bytes`] returns.
#[derive(Debug, Clone)]
pub(crate) struct Parsed {
    /// Format version (2 or 3).
    pub(crate) version: u32,
    /// Data alignment (`general.alignment`, default 32).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) alignment: usize,
    /// Byte offset of the data section (tensor offsets are relative to it in the file;
    /// [`TensorInfo::offset`] already includes it).
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub(crate) data_start: usize,
    /// The key/values.
    pub(crate) meta: Metadata,
    /// The tensor infos, in file order.
    pub(crate) tensors: Vec<TensorInfo>,
}

/// Reads little-endian fields, every read checked against the end.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Cursor<'a> {
    fn bad(&self, msg: String) -> Error {
        Error::invalid_model(format!("{}: {msg}", self.file))
    }

    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.bad(format!(
                "truncated: {} needs {n} bytes at byte {} but the file has {} bytes",
                what(),
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each taking at least `min` bytes, checked to fit in what is left.
    fn count(&mut self, min: usize, what: &dyn Fn() -> String) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = self.left() / min.max(1);
        if n > fits as u64 {
            return Err(self.bad(format!(
                "{} is {n} (at byte {at}), more than the {} bytes left can hold \
                 ({min} bytes each at least)",
                what(),
                self.left()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos;
        let n = self.u64(&|| format!("{} (length)", what()))?;
        if n > self.left() as u64 {
            return Err(self.bad(format!(
                "{}: string length {n} at byte {at} runs past the end of the file \
                 ({} bytes left)",
                what(),
                self.left()
            )));
        }
        let bytes = self.take(n as usize, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| self.bad(format!("{}: string at byte {at} is not UTF-8", what())))
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        ValueType::from_id(id).ok_or_else(|| {
            self.bad(format!(
                "{}: unknown metadata value type {id} at byte {at}",
                what()
            ))
        })
    }

    fn value(&mut self, t: ValueType, depth: usize, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match t {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => Value::Bool(self.bool(what)?),
            ValueType::Str => Value::Str(self.string(what)?),
            ValueType::Array => Value::Array(self.array_value(depth + 1, what)?),
        })
    }

    fn bool(&mut self, what: &dyn Fn() -> String) -> Result<bool> {
        let at = self.pos;
        match self.array::<1>(what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.bad(format!(
                "{}: bool at byte {at} is {b} (must be 0 or 1)",
                what()
            ))),
        }
    }

    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<Array> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.bad(format!(
                "{}: arrays nested deeper than {MAX_ARRAY_DEPTH} at byte {}",
                what(),
                self.pos
            )));
        }
        let t = self.value_type(&|| format!("{} (array element type)", what()))?;
        let n = self.count(t.min_bytes(), &|| format!("{} (array length)", what()))?;
        // `n` elements fit in the bytes left: fixed-size arrays are allocated exactly
        // (their size in memory is their size in the file); strings and arrays grow as
        // they are read.
        let grow = n.min(4096);
        macro_rules! fixed {
            ($variant:ident, $ty:ty) => {{
                let raw = self.take(n * size_of::<$ty>(), what)?;
                Array::$variant(
                    raw.chunks_exact(size_of::<$ty>())
                        .map(|c| <$ty>::from_le_bytes(c.try_into().expect("element bytes")))
                        .collect(),
                )
            }};
        }
        Ok(match t {
            ValueType::U8 => Array::U8(self.take(n, what)?.to_vec()),
            ValueType::I8 => Array::I8(self.take(n, what)?.iter().map(|&b| b as i8).collect()),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.bool(&|| format!("{} element #{i}", what()))?);
                }
                Array::Bool(v)
            }
            ValueType::Str => {
                let mut v = Vec::with_capacity(grow);
                for i in 0..n {
                    v.push(self.string(&|| format!("{} element #{i}", what()))?);
                }
                Array::Str(v)
            }
            ValueType::Array => {
                let mut v = Vec::with_capacity(grow);
                for i in 0..n {
                    v.push(self.array_value(depth + 1, &|| format!("{} element #{i}", what()))?);
                }
                Array::Array(v)
            }
        })
    }
}

/// Parses and validates the GGUF file `bytes`; `name` names it in errors (a path).
///
/// Never panics and never allocates more than a small multiple of `bytes.len()`,
/// whatever the bytes: the entry point for fuzzing.
pub(crate) fn parse_bytes(bytes: &[u8], name: &str) -> Result<Parsed> {
    let mut c = Cursor {
        b: bytes,
        pos: 0,
        file: name,
    };
    if bytes.len() < 4 {
        return Err(c.bad(format!(
            "not a GGUF file ({} bytes, too short for the magic)",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(c.bad(format!(
            "not a GGUF file: magic {:?} (expected \"GGUF\")",
            String::from_utf8_lossy(&bytes[..4])
        )));
    }
    c.pos = 4;
    let version = c.u32(&|| "header field `version`".into())?;
    if version != 2 && version != 3 {
        let msg = if version & 0xffff == 0 && matches!(version.swap_bytes(), 1..=3) {
            format!(
                "big-endian GGUF (version {}) is not supported",
                version.swap_bytes()
            )
        } else {
            format!("GGUF version {version} is not supported (only 2 and 3)")
        };
        return Err(Error::unsupported(format!("{name}: {msg}")));
    }
    // A tensor info takes at least 24 bytes (name length, n_dims, type, offset), a
    // key/value at least 13 (key length, type, one byte of value).
    let n_tensors = c.count(24, &|| "header field `tensor_count`".into())?;
    let n_kv = c.count(13, &|| "header field `metadata_kv_count`".into())?;

    let mut entries: Vec<(String, Value)> = Vec::with_capacity(n_kv.min(4096));
    let mut index: HashMap<String, usize> = HashMap::with_capacity(n_kv.min(4096));
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata `{key}`");
        let t = c.value_type(&|| format!("{} (type)", what()))?;
        let v = c.value(t, 0, &what)?;
        if index.contains_key(&key) {
            return Err(c.bad(format!("duplicate metadata key `{key}`")));
        }
        index.insert(key.clone(), entries.len());
        entries.push((key, v));
    }
    let meta = Metadata {
        file: name.to_string(),
        entries,
        index,
    };

    let alignment = match meta.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as usize,
        Some(Value::U32(a)) => {
            return Err(c.bad(format!(
                "metadata `general.alignment` is {a}, not a power of two"
            )))
        }
        Some(v) => {
            return Err(c.bad(format!(
                "metadata `general.alignment` is {}, expected u32",
                v.type_name()
            )))
        }
    };

    // Tensor infos: (info, offset relative to the data section).
    let mut raw: Vec<(TensorInfo, u64)> = Vec::with_capacity(n_tensors.min(4096));
    let mut names: HashSet<String> = HashSet::with_capacity(n_tensors.min(4096));
    for i in 0..n_tensors {
        let tname = c.string(&|| format!("tensor info #{i} name"))?;
        let what = |field: &str| format!("tensor `{tname}` {field}");
        let n_dims = c.u32(&|| what("n_dims"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(c.bad(format!(
                "tensor `{tname}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut ne = [1u64; MAX_DIMS];
        for (d, ne) in ne.iter_mut().enumerate().take(n_dims) {
            *ne = c.u64(&|| what(&format!("dimension {d}")))?;
        }
        let type_id = c.u32(&|| what("type"))?;
        let offset = c.u64(&|| what("offset"))?;
        let ggml_type = match GgmlType::from_id(type_id) {
            Ok(t) => t,
            Err(TypeRefusal::Unsupported(tn)) => {
                return Err(Error::unsupported(format!(
                    "{name}: tensor `{tname}` has type {tn}; supported: {}",
                    ggml::supported_names()
                )))
            }
            Err(TypeRefusal::Unknown(id)) => {
                return Err(Error::unsupported(format!(
                    "{name}: tensor `{tname}` has unknown ggml type {id}; supported: {}",
                    ggml::supported_names()
                )))
            }
        };
        let dims = &ne[..n_dims];
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok());
        let Some(numel) = numel else {
            return Err(c.bad(format!(
                "tensor `{tname}`: dimensions {dims:?} overflow the element count"
            )));
        };
        // ne[0] fits usize: it divides numel, or numel is 0 (then no byte is needed).
        let row = usize::try_from(ne[0]).unwrap_or(usize::MAX);
        if !row.is_multiple_of(ggml_type.block_size()) {
            return Err(c.bad(format!(
                "tensor `{tname}` ({ggml_type}): row length {} is not a multiple of the block \
                 size {}",
                ne[0],
                ggml_type.block_size()
            )));
        }
        let len = match numel {
            0 => Some(0),
            n => ggml_type
                .bytes_for(row)
                .and_then(|rb| rb.checked_mul(n / row)),
        };
        let Some(len) = len else {
            return Err(c.bad(format!(
                "tensor `{tname}` ({ggml_type}): dimensions {dims:?} overflow the byte size"
            )));
        };
        if !names.insert(tname.clone()) {
            return Err(c.bad(format!("duplicate tensor `{tname}`")));
        }
        let shape = dims.iter().rev().map(|&d| d as usize).collect();
        let info = TensorInfo {
            name: tname,
            ggml_type,
            shape,
            offset: 0,
            len,
        };
        raw.push((info, offset));
    }

    let data_start = c.pos.next_multiple_of(alignment);
    let mut tensors = Vec::with_capacity(raw.len());
    for (mut t, offset) in raw {
        if offset % alignment as u64 != 0 {
            return Err(c.bad(format!(
                "tensor `{}` offset {offset} is not a multiple of the alignment {alignment}",
                t.name
            )));
        }
        let start = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .filter(|&s| s <= bytes.len());
        let Some(start) = start else {
            return Err(c.bad(format!(
                "tensor `{}` offset {offset} (data section at byte {data_start}) is past \
                 the end of the file ({} bytes)",
                t.name,
                bytes.len()
            )));
        };
        if t.len > bytes.len() - start {
            return Err(c.bad(format!(
                "tensor `{}` ({}, shape {:?}) needs {} bytes at byte {start} but the file \
                 has {} bytes (truncated?)",
                t.name,
                t.ggml_type,
                t.shape,
                t.len,
                bytes.len()
            )));
        }
        t.offset = start;
        tensors.push(t);
    }
    Ok(Parsed {
        version,
        alignment,
        data_start,
        meta,
        tensors,
    })
}
