#!/usr/bin/env python3
"""Compiles kernels/*.cu to PTX with the pinned NVRTC from PyPI.

    python3 scripts/build-kernels.py           # (re)write kernels/NAME.ptx
    python3 scripts/build-kernels.py --check   # exit 1 if any kernels/NAME.ptx is stale

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
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"
NVRTC_VERSION = (12, 4)
ARCH = "compute_80"


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check",
        action="store_true",
        help="compile in memory and fail if a committed kernels/NAME.ptx differs",
    )
    args = ap.parse_args()
    sources = sorted(KERNELS.glob("*.cu"))
    if not sources:
        die(f"no {KERNELS}/*.cu")
    lib, inc_dir = load_nvrtc()
    stale = []
    for src in sources:
        ptx = compile_ptx(lib, inc_dir, src)
        out = src.with_suffix(".ptx")
        rel = out.relative_to(ROOT)
        old = out.read_bytes() if out.is_file() else None
        if args.check:
            if old != ptx:
                if old is None:
                    print(f"{rel} does not exist", file=sys.stderr)
                print(
                    f"{rel} is stale: run python3 scripts/build-kernels.py",
                    file=sys.stderr,
                )
                stale.append(rel)
        elif old != ptx:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_bytes(ptx)
            os.replace(tmp, out)
            print(f"wrote {rel} ({len(ptx)} bytes)")
        else:
            print(f"{rel} unchanged")
    if stale:
        sys.exit(1)
    if args.check:
        print(f"kernels: PTX fresh ({len(sources)} file(s))")


if __name__ == "__main__":
    main()
