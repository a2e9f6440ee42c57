#!/usr/bin/env python3
"""Compiles kernels/*.cu to PTX with the pinned NVRTC from PyPI, and writes the Rust table.

    python3 scripts/build-kernels.py              # (re)write the Rust table and kernels/NAME.ptx
    python3 scripts/build-kernels.py --rust-only  # (re)write only the Rust table (no NVRTC)
    python3 scripts/build-kernels.py --check      # exit 1 if the Rust table or a PTX is stale
    python3 scripts/build-kernels.py --check-rust # exit 1 if the Rust table is stale (no NVRTC)

The Rust table (src/backend/cuda/kernels.rs for kernels/subspec.cu) is parsed from the .cu
file with plain Python, no NVRTC: every `extern "C" __global__` kernel with its parameters
as Rust types (pointers become typed device pointers, `int` i32, `float` f32, ...) and the
`#define` constants the host's launch geometry uses (HOST_CONSTANTS). The backend launches
the kernels only through the typed wrappers the table expands to, so a signature change
in the .cu that is not regenerated fails `--check-rust` (and tests/kernel_abi.rs), and one
that is regenerated is a compile error at every launch that no longer fits.

The PTX is committed and embedded in the library with include_str!, so building the crate
needs no CUDA toolkit. NVRTC is loaded through ctypes from the Python packages
nvidia-cuda-nvrtc-cu12==12.4.127 and nvidia-cuda-runtime-cu12==12.4.127 (for cuda_fp16.h
and cuda_bf16.h) installed for the Python running this script; scripts/check-kernels.sh
creates such an environment. The output is deterministic: the program is named by its
file name only and no debug or line information is emitted, so the same source gives
byte-identical PTX on every machine.
"""

import argparse
import ctypes
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
NVRTC_VERSION = (12, 4)
ARCH = "compute_80"

# Per kernel source, the Rust file its table is written to.
RUST_TABLES = {"subspec.cu": ROOT / "src" / "backend" / "cuda" / "kernels.rs"}
# The `#define`s of the source the host side needs (launch geometry and limits), in order.
HOST_CONSTANTS = {
    "subspec.cu": ["ATT_WARPS", "ATT_MAX_PER_LANE", "QL_WARPS", "QL_TILE", "DN_TILE", "MM_WARPS", "MM_ROWS"],
}
# Element types a kernel may point to, and the Rust type of each.
ELEMENT_TYPES = {
    "float": "f32",
    "__half": "f16",
    "__nv_bfloat16": "bf16",
    "unsigned": "u32",
    "unsigned int": "u32",
    "int": "i32",
    "unsigned char": "u8",
}
# Scalar parameter types and their Rust types (each implements `KernelArg` in launch.rs).
SCALAR_TYPES = {
    "int": "i32",
    "unsigned": "u32",
    "unsigned int": "u32",
    "long long": "i64",
    "long long int": "i64",
    "unsigned long long": "u64",
    "float": "f32",
}
RUST_KEYWORDS = set(
    "as break const continue crate else enum extern false fn for if impl in let loop match "
    "mod move mut pub ref return self Self static struct super trait true type unsafe use "
    "where while async await dyn abstract become box do final macro override priv typeof "
    "unsized virtual yield try gen".split()
)


def die(msg):
    print(f"build-kernels: {msg}", file=sys.stderr)
    sys.exit(1)


def find_package_dir(sub):
    """`nvidia/<sub>` in the running Python's search path."""
    for entry in sys.path:
        d = Path(entry or ".") / "nvidia" / sub
        if d.is_dir():
            return d
    return None


def load_nvrtc():
    lib_dir = find_package_dir("cuda_nvrtc")
    inc_dir = find_package_dir("cuda_runtime")
    if lib_dir is None or inc_dir is None:
        die(
            "NVRTC not found for "
            + sys.executable
            + ": install nvidia-cuda-nvrtc-cu12==12.4.127 and nvidia-cuda-runtime-cu12==12.4.127 "
            "(bash scripts/check-kernels.sh creates a virtual environment with them)"
        )
    lib_dir = lib_dir / "lib"
    inc_dir = inc_dir / "include"
    # libnvrtc dlopens libnvrtc-builtins by its soname; preloading it globally makes that
    # work without LD_LIBRARY_PATH.
    builtins = sorted(lib_dir.glob("libnvrtc-builtins.so.*"))
    if not builtins:
        die(f"{lib_dir}: libnvrtc-builtins.so.* missing")
    try:
        for b in builtins:
            ctypes.CDLL(str(b), mode=ctypes.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(lib_dir / "libnvrtc.so.12"), mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        die(f"cannot load NVRTC from {lib_dir}: {e}")
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    if (major.value, minor.value) != NVRTC_VERSION:
        die(
            f"NVRTC {major.value}.{minor.value} found in {lib_dir}, the PTX is pinned to "
            f"{NVRTC_VERSION[0]}.{NVRTC_VERSION[1]}: install nvidia-cuda-nvrtc-cu12==12.4.127"
        )
    return lib, inc_dir


def compile_ptx(lib, inc_dir, src_path):
    """PTX text of `src_path`; exits with the NVRTC log on failure."""
    src = src_path.read_bytes()
    prog = ctypes.c_void_p()

    def check(res, what):
        if res != 0:
            die(f"{src_path.name}: {what} failed: {lib.nvrtcGetErrorString(res).decode()}")

    check(
        lib.nvrtcCreateProgram(
            ctypes.byref(prog), src, src_path.name.encode(), 0, None, None
        ),
        "nvrtcCreateProgram",
    )
    try:
        opts = [
            f"--gpu-architecture={ARCH}",
            f"-I{inc_dir}",
            f"-I{src_path.parent}",
            "--std=c++17",
            "-default-device",
        ]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        res = lib.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace").strip()
        if res != 0:
            print(log, file=sys.stderr)
            die(f"{src_path.name}: compilation failed ({lib.nvrtcGetErrorString(res).decode()})")
        if log:
            print(f"{src_path.name}: NVRTC log:\n{log}", file=sys.stderr)
        check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        return buf.raw.rstrip(b"\0")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def blank_comments(text):
    """`text` with every comment replaced by spaces (newlines kept, so offsets and line
    numbers still match the original)."""

    def spaces(m):
        return re.sub(r"[^\n]", " ", m.group(0))

    return re.sub(r"//[^\n]*|/\*.*?\*/", spaces, text, flags=re.S)


def rust_param(src_name, kernel, decl):
    """(rust name, rust type) of one C parameter declaration, e.g. `const float* __restrict__ x`."""
    words = re.findall(r"[A-Za-z_]\w*|\*", decl.replace("__restrict__", " ").replace("__restrict", " "))
    if len(words) < 2 or not re.fullmatch(r"[A-Za-z_]\w*", words[-1]):
        die(f"{src_name}: kernel {kernel}: cannot parse the parameter `{decl.strip()}`")
    name, words = words[-1], words[:-1]
    stars = words.count("*")
    if stars > 1:
        die(f"{src_name}: kernel {kernel}: `{decl.strip()}`: pointers to pointers are not supported")
    if stars == 1:
        star = words.index("*")
        pointee, after = words[:star], words[star + 1 :]
        if any(w != "const" for w in after):
            die(f"{src_name}: kernel {kernel}: cannot parse the parameter `{decl.strip()}`")
        const = "const" in pointee
        base = " ".join(w for w in pointee if w != "const")
        if base not in ELEMENT_TYPES:
            die(f"{src_name}: kernel {kernel}: `{decl.strip()}`: no Rust element type for `{base}` (ELEMENT_TYPES)")
        ty = f"{'DevPtr' if const else 'DevPtrMut'}<{ELEMENT_TYPES[base]}>"
    else:
        base = " ".join(w for w in words if w != "const")
        if base not in SCALAR_TYPES:
            die(f"{src_name}: kernel {kernel}: `{decl.strip()}`: no Rust type for `{base}` (SCALAR_TYPES)")
        ty = SCALAR_TYPES[base]
    if name in RUST_KEYWORDS:
        name += "_"
    return name, ty


def parse_kernels(src_path):
    """[(name, c declaration, comment lines, [(rust name, rust type)])] of every
    `extern "C" __global__` kernel of the source, in order."""
    text = src_path.read_text()
    code = blank_comments(text)
    lines = text.split("\n")
    out = []
    pat = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+([A-Za-z_]\w*)\s*\(([^)]*)\)')
    for m in pat.finditer(code):
        name, params = m.group(1), m.group(2)
        decls = params.split(",")
        if len(decls) == 1 and decls[0].strip() in ("", "void"):
            decls = []
        args = [rust_param(src_path.name, name, d) for d in decls]
        if len({a[0] for a in args}) != len(args):
            die(f"{src_path.name}: kernel {name}: two parameters share a name")
        # The comment lines directly above the declaration.
        line = code.count("\n", 0, m.start())
        comment = []
        i = line - 1
        while i >= 0 and lines[i].lstrip().startswith("//"):
            comment.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        c_decl = " ".join(text[m.start() : m.end()].split())
        out.append((name, c_decl, comment, args))
    if not out:
        die(f"{src_path.name}: no extern \"C\" __global__ kernels found")
    names = [k[0] for k in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        die(f"{src_path.name}: kernels defined twice: {', '.join(dup)}")
    return out


def parse_constants(src_path, wanted):
    """{name: int} of the `#define NAME <integer>` lines named in `wanted`."""
    code = blank_comments(src_path.read_text())
    found = {}
    for m in re.finditer(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+([^\n]*?)[ \t]*$", code, flags=re.M):
        name, value = m.group(1), m.group(2)
        if name not in wanted:
            continue
        if name in found:
            die(f"{src_path.name}: #define {name} appears twice")
        v = re.fullmatch(r"(0[xX][0-9a-fA-F]+|[0-9]+)[uU]?", value)
        if not v:
            die(f"{src_path.name}: #define {name} {value}: the host needs a plain integer")
        found[name] = int(v.group(1), 0)
    missing = [n for n in wanted if n not in found]
    if missing:
        die(f"{src_path.name}: #define {', '.join(missing)} missing (HOST_CONSTANTS)")
    return found


def rust_table(src_path):
    """The text of the Rust table of `src_path`."""
    rel = src_path.relative_to(ROOT)
    kernels = parse_kernels(src_path)
    consts = parse_constants(src_path, HOST_CONSTANTS.get(src_path.name, []))
    types = {ty for _, _, _, args in kernels for _, ty in args}
    halfs = sorted(t for t in ("bf16", "f16") if any(f"<{t}>" in ty for ty in types))
    ptrs = sorted(p for p in ("DevPtr", "DevPtrMut") if any(ty.startswith(p + "<") for ty in types))
    o = []
    o.append(f"//! The kernels of `{rel}` as typed launch wrappers, and the constants the host's")
    o.append("//! launch geometry shares with them.")
    o.append("//!")
    o.append(f"//! Generated by scripts/build-kernels.py from {rel}: do not edit. After changing a")
    o.append("//! kernel's signature or one of these `#define`s, run `python3 scripts/build-kernels.py`")
    o.append("//! (`--rust-only` without NVRTC); `--check-rust` and tests/kernel_abi.rs fail while this")
    o.append("//! file is stale. `kernel_table!` (launch.rs) expands the list below into `Kernels`,")
    o.append("//! one `unsafe fn` per kernel taking exactly its parameters, and `KERNEL_ABI`.")
    o.append("")
    if halfs:
        o.append(f"use half::{{{', '.join(halfs)}}};" if len(halfs) > 1 else f"use half::{halfs[0]};")
        o.append("")
    o.append(f"use super::launch::{{kernel_table, {', '.join(ptrs)}}};" if ptrs else "use super::launch::kernel_table;")
    o.append("")
    for name, value in consts.items():
        o.append(f"/// `#define {name} {value}` in `{rel}`.")
        o.append(f"pub(crate) const {name}: u32 = {value};")
    if consts:
        o.append("")
    o.append("kernel_table! {")
    for i, (name, c_decl, comment, args) in enumerate(kernels):
        if i:
            o.append("")
        o.append("    /// ```text")
        for c in comment:
            o.append(f"    /// {c}".rstrip())
        o.append(f"    /// {c_decl}")
        o.append("    /// ```")
        params = ", ".join(f"{n}: {t}" for n, t in args)
        o.append(f"    fn {name}({params});")
    o.append("}")
    return "\n".join(o) + "\n"


def rust_tables(sources):
    """[(path, text)] of the Rust table of every source that has one."""
    out = []
    for src in sources:
        if src.name not in RUST_TABLES:
            die(f"{src.relative_to(ROOT)}: no Rust table for it in RUST_TABLES")
        out.append((RUST_TABLES[src.name], rust_table(src).encode()))
    return out


def write_or_check(path, data, check, hint):
    """Writes `data` to `path` when it differs, or (check) reports it stale; True if fresh."""
    rel = path.relative_to(ROOT)
    old = path.read_bytes() if path.is_file() else None
    if old == data:
        if not check:
            print(f"{rel} unchanged")
        return True
    if check:
        if old is None:
            print(f"{rel} does not exist", file=sys.stderr)
        print(f"{rel} is stale: run python3 scripts/build-kernels.py{hint}", file=sys.stderr)
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    print(f"wrote {rel} ({len(data)} bytes)")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="fail if the Rust table or a committed kernels/NAME.ptx differs from what the "
        "sources give (the Rust table is checked first, without NVRTC)",
    )
    ap.add_argument(
        "--check-rust",
        action="store_true",
        help="fail if the Rust table differs from what the sources give (no NVRTC needed)",
    )
    ap.add_argument(
        "--rust-only",
        action="store_true",
        help="write only the Rust table (no NVRTC needed; the PTX may then be stale)",
    )
    args = ap.parse_args()
    check = args.check or args.check_rust
    sources = sorted(KERNELS.glob("*.cu"))
    if not sources:
        die(f"no {KERNELS}/*.cu")
    # The Rust table first: it needs no NVRTC, so it is checked (or written) everywhere.
    tables = rust_tables(sources)
    fresh = [write_or_check(p, d, check, " (--rust-only without NVRTC)") for p, d in tables]
    if check and all(fresh):
        print(f"kernels: Rust table fresh ({len(tables)} file(s))")
    if args.check_rust or args.rust_only:
        sys.exit(0 if all(fresh) else 1)
    lib, inc_dir = load_nvrtc()
    for src in sources:
        ptx = compile_ptx(lib, inc_dir, src)
        fresh.append(write_or_check(src.with_suffix(".ptx"), ptx, check, ""))
    if not all(fresh):
        sys.exit(1)
    if check:
        print(f"kernels: PTX fresh ({len(sources)} file(s))")


if __name__ == "__main__":
    main()
