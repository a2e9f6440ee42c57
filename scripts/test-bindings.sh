#!/usr/bin/env bash
# The C ABI proven from every language: installs what a fresh Debian machine lacks (apt, npm),
# then runs, against target/release/libsubspec.so:
#   header    the committed include/subspec.h is cbindgen's output; fixtures from the Rust engine
#   c         tests/c/test_ffi.c (-Wall -Werror): every bad input, generation == Rust engine
#   faults    tests/c/test_faults.c with tests/c/fault_shim.c interposing pread64: EIO and
#             end-of-file reads of the model file mid-pass and at load (status IO, the
#             sequence unchanged, recovery to the fault-free output)
#   valgrind  the same C suite on the tiny model: no errors, definitely lost 0
#   cpp       bindings/cpp test program (header-only RAII wrapper)
#   sanitizers the C suite and the C++ test built with ASan + UBSan (LeakSanitizer at exit)
#   examples  scripts/install.sh into a prefix; examples/ built with CMake find_package
#             (when cmake is present) and pkg-config; the C example runs to the end
#   go        bindings/go: go vet + go test (cgo, pkg-config)
#   node      bindings/node: tsc type check of index.d.ts + node --test (koffi)
# Prints one line per stage and `bindings: N passed, M failed`; exits non-zero on failure.
# Reuses target/release (built by `cargo test --release`); set SUBSPEC_SKIP_INSTALL=1 to
# skip apt/npm installs.
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="$root/target/bindings"
fixtures="$root/target/tmp/bindings"
prefix="$work/prefix"
mkdir -p "$work"
start=$SECONDS

# ---- what a fresh machine lacks ----
need=()
command -v cc >/dev/null || need+=(gcc)
command -v c++ >/dev/null || need+=(g++)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v valgrind >/dev/null || need+=(valgrind)
command -v go >/dev/null || need+=(golang-go)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v cmake >/dev/null || need+=(cmake)
if ((${#need[@]})) && [[ -z "${SUBSPEC_SKIP_INSTALL:-}" ]]; then
    echo "== installing ${need[*]}"
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

passed=0
failed=0
failures=()
stage() { # stage NAME COMMAND...: runs COMMAND, records the result
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name"
    if "$@"; then
        passed=$((passed + 1)); echo "-- $name: ok ($((SECONDS - t0))s)"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "-- $name: FAILED ($((SECONDS - t0))s)"
    fi
}

build() {
    cargo build --release --lib -q &&
    cargo test --release -q --test ffi 2>&1 | tail -3 &&
    [[ -f "$fixtures/tiny.expected" && -f "$fixtures/smollm2.expected" ]] &&
    bash scripts/install.sh "$prefix"
}
stage header build || { echo "bindings: $passed passed, $((failed)) failed (no library or fixtures)"; exit 1; }
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SUBSPEC_FIXTURES="$fixtures" SUBSPEC_LIB="$prefix/lib/libsubspec.so"

c_suite() {
    cc -std=c11 -Wall -Wextra -Werror -g -O1 tests/c/test_ffi.c $(pkg-config --cflags --libs subspec) \
        -lpthread -o "$work/test_ffi" && "$work/test_ffi" "$fixtures"
}
stage c c_suite

fault_suite() {
    cc -std=c11 -Wall -Wextra -Werror -g -O1 tests/c/test_faults.c tests/c/fault_shim.c \
        $(pkg-config --cflags --libs subspec) -ldl -lpthread -o "$work/test_faults" &&
        "$work/test_faults" "$fixtures"
}
stage faults fault_suite

valgrind_suite() {
    valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        --log-file="$work/valgrind.log" "$work/test_ffi" "$fixtures" --tiny-only
    local rc=$?
    grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost|still reachable|All heap" "$work/valgrind.log" | sed 's/^==[0-9]*== */   /'
    [[ $rc -eq 0 ]] && grep -q "ERROR SUMMARY: 0 errors" "$work/valgrind.log"
}
stage valgrind valgrind_suite

cpp_suite() {
    c++ -std=c++17 -Wall -Wextra -Werror -g -O1 bindings/cpp/test.cpp $(pkg-config --cflags --libs subspec) \
        -lpthread -o "$work/test_cpp" && "$work/test_cpp" "$fixtures"
}
stage cpp cpp_suite

# The C and C++ sides instrumented (the Rust library is not, but ASan's malloc interposes
# on its allocations too, so LeakSanitizer sees a handle the host forgets to free).
sanitizer_suites() {
    local san=(-g -O1 -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
    cc -std=c11 -Wall -Wextra -Werror "${san[@]}" tests/c/test_ffi.c $(pkg-config --cflags --libs subspec) \
        -lpthread -o "$work/test_ffi_asan" &&
    c++ -std=c++17 -Wall -Wextra -Werror "${san[@]}" bindings/cpp/test.cpp $(pkg-config --cflags --libs subspec) \
        -lpthread -o "$work/test_cpp_asan" || return 1
    local t
    for t in test_ffi_asan test_cpp_asan; do
        ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
            "$work/$t" "$fixtures" > "$work/$t.log" 2>&1 ||
            { tail -40 "$work/$t.log"; return 1; }
        tail -1 "$work/$t.log"
    done
}
stage sanitizers sanitizer_suites

examples() {
    local model; model=$(sed -n 's/^model: //p' "$fixtures/smollm2.expected")
    cc -std=c11 -Wall -Wextra -Werror examples/c/generate.c $(pkg-config --cflags --libs subspec) -o "$work/generate_c" &&
    c++ -std=c++17 -Wall -Wextra -Werror examples/cpp/generate.cpp $(pkg-config --cflags --libs subspec) -o "$work/generate_cpp" || return 1
    if command -v cmake >/dev/null; then
        cmake -S examples -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null &&
        cmake --build "$work/cmake" -j 2 >/dev/null || { echo "CMake find_package(subspec) build failed"; return 1; }
    else
        echo "   (cmake not installed: find_package(subspec) not checked)"
    fi
    local out; out=$("$work/generate_c" "$model") || return 1
    echo "$out" | tail -1
    echo "$out" | grep -q "tau [0-9]"
}
stage examples examples

go_suite() {
    (cd bindings/go && go vet ./... && go test -count=1 -v ./... > "$work/go.log" 2>&1; rc=$?
     grep -E "^(---|ok|FAIL)|tau" "$work/go.log"; exit $rc)
}
stage go go_suite

node_suite() {
    (cd bindings/node &&
     { [[ -d node_modules/koffi && -d node_modules/typescript ]] || npm ci --no-audit --no-fund --loglevel=error; } &&
     npm run -s typecheck && node --test test/subspec.test.js > "$work/node.log" 2>&1; rc=$?
     grep -E "^(not )?ok |^# (pass|fail|tau)" "$work/node.log"; exit $rc)
}
stage node node_suite

echo "bindings: $passed passed, $failed failed${failures:+ (${failures[*]})} in $((SECONDS - start))s"
((failed == 0))
