#!/usr/bin/env bash
# Installs the C library for C/C++ (and the Go/Node bindings) under PREFIX:
#   PREFIX/lib/libsubspec.{so,a}, PREFIX/include/subspec.h (+ subspec.hpp, the C++ wrapper),
#   PREFIX/lib/pkgconfig/subspec.pc, PREFIX/lib/cmake/subspec/subspec{Config,ConfigVersion}.cmake
#
#   cargo build --release && bash scripts/install.sh /usr/local
#
# Then: `cc app.c $(pkg-config --cflags --libs subspec)`, or in CMake
# `find_package(subspec REQUIRED)` + `target_link_libraries(app PRIVATE subspec::subspec)`
# (set CMAKE_PREFIX_PATH / PKG_CONFIG_PATH when PREFIX is not a system prefix).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix="${1:?usage: install.sh PREFIX}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"
lib="${CARGO_TARGET_DIR:-target}/release"
[[ -f "$lib/libsubspec.so" ]] || { echo "$lib/libsubspec.so missing: run cargo build --release" >&2; exit 1; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

install -d "$prefix/lib/pkgconfig" "$prefix/lib/cmake/subspec" "$prefix/include"
install -m 755 "$lib/libsubspec.so" "$prefix/lib/"
install -m 644 "$lib/libsubspec.a" "$prefix/lib/"
install -m 644 include/subspec.h bindings/cpp/subspec.hpp "$prefix/include/"
subst() { sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$version|g" "$1" > "$2"; }
subst packaging/subspec.pc.in "$prefix/lib/pkgconfig/subspec.pc"
subst packaging/subspecConfig.cmake.in "$prefix/lib/cmake/subspec/subspecConfig.cmake"
subst packaging/subspecConfigVersion.cmake.in "$prefix/lib/cmake/subspec/subspecConfigVersion.cmake"
echo "installed subspec $version under $prefix"
