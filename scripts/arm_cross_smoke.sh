#!/usr/bin/env bash
# Cross-build llama.cpp for aarch64 (Raspberry Pi OS 64-bit) on an x86-64 Debian/Ubuntu machine
# and run the bundled stack under qemu-user: a smoke test of the ARM build and its kernels, not
# part of CI (it takes about 15 minutes on 2 cores).
#
#   sudo apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake
#   scripts/arm_cross_smoke.sh [QUESTIONS]          # default: 40 questions of eval.jsonl
#
# Environment: SDIST (an unpacked llama-cpp-python 0.3.36 sdist, the llama.cpp edgestack runs;
# `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` and untar it),
# OUT (build folder, default /tmp/edgestack-arm), ARCH (-march for the Pi 5, the default, or
# armv8-a for a Pi 4), CPU (what qemu emulates: cortex-a76 = Pi 5, cortex-a72 = Pi 4).
#
# What runs on the emulated CPU: llama.cpp built as `pip install .` builds it on a Pi
# (GGML_NATIVE off, -march=$ARCH instead of -mcpu=native), through scripts/arm_smoke/stack_smoke.c,
# which runs models/word-problems the way edgestack does (32-token micro-batches, flash
# attention, each stage's adapter on one context, greedy, stop at a newline). Its answers are
# compared with eval.jsonl. Python and edgestack itself do not run under qemu (that needs an
# aarch64 Python and numpy; a Pi has them).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
SDIST=${SDIST:-/tmp/sdist/llama_cpp_python-0.3.36}
OUT=${OUT:-/tmp/edgestack-arm}
ARCH=${ARCH:-armv8.2-a+dotprod+fp16}
CPU=${CPU:-cortex-a76}
N=${1:-40}
STACK=$HERE/models/word-problems
SYSROOT=/usr/aarch64-linux-gnu

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 cmake; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: sudo apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake" >&2
        exit 2
    }
done
[ -f "$SDIST/vendor/llama.cpp/CMakeLists.txt" ] || {
    echo "no llama.cpp sources at $SDIST/vendor/llama.cpp; set SDIST (see the header)" >&2
    exit 2
}

mkdir -p "$OUT"
start=$(date +%s)
cmake -S "$SDIST/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DCMAKE_FIND_ROOT_PATH="$SYSROOT" -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER \
    -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF \
    >"$OUT/cmake.log"
cmake --build "$OUT/build" -j "$(nproc)" --target llama >"$OUT/build.log"
built=$(( $(date +%s) - start ))
LIBDIR=$(dirname "$(find "$OUT/build" -name 'libllama.so' | head -n 1)")
aarch64-linux-gnu-gcc -O2 -o "$OUT/stack_smoke" "$HERE/scripts/arm_smoke/stack_smoke.c" \
    -I "$SDIST/vendor/llama.cpp/include" -I "$SDIST/vendor/llama.cpp/ggml/include" \
    -L "$LIBDIR" -lllama -Wl,-rpath,"$LIBDIR"
file "$OUT/stack_smoke" "$LIBDIR/libllama.so" | sed "s|$OUT/||"

python3 - "$STACK/eval.jsonl" "$N" >"$OUT/questions.txt" <<'EOF'
import json, sys
for line in open(sys.argv[1]).read().splitlines()[: int(sys.argv[2])]:
    print(json.loads(line)["question"])
EOF
start=$(date +%s)
QEMU_LD_PREFIX=$SYSROOT LD_LIBRARY_PATH=$LIBDIR qemu-aarch64 -cpu "$CPU" "$OUT/stack_smoke" \
    "$STACK/base.q8_0.gguf" "$OUT/questions.txt" \
    extract "$STACK/extract.lora.gguf" 16 $'Question: {question}\nExpression:' \
    compute "$STACK/compute.lora.gguf" 8 $'Expression: {extract}\nResult:' \
    answer "$STACK/answer.lora.gguf" 40 $'Question: {question}\nExpression: {extract}\nResult: {compute}\nAnswer:' \
    >"$OUT/answers.txt" 2>"$OUT/qemu.log"
ran=$(( $(date +%s) - start ))
python3 - "$STACK/eval.jsonl" "$OUT/answers.txt" "$built" "$ran" "$CPU" "$ARCH" <<'EOF'
import json, re, sys
expected = [json.loads(l)["answer"] for l in open(sys.argv[1]).read().splitlines()]
got = open(sys.argv[2]).read().splitlines()
right = 0
for want, line in zip(expected, got):
    numbers = re.findall(r"-?\d+", line.rsplit(" | ", 1)[-1])
    right += bool(numbers) and int(numbers[-1]) == want
print(f"aarch64 ({sys.argv[6]}) under qemu -cpu {sys.argv[5]}: {right}/{len(got)} answers right; "
      f"build {sys.argv[3]} s, run {sys.argv[4]} s")
for line in got[:3]:
    print("  " + line)
sys.exit(0 if got and right == len(got) else 1)
EOF
