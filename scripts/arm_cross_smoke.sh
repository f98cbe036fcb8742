#!/usr/bin/env bash
# Cross-build llama.cpp for aarch64 (Raspberry Pi OS 64-bit) on an x86-64 Debian/Ubuntu machine
# and run the bundled stack under qemu-user: a smoke test of the ARM build and its kernels, not
# part of CI or pytest. A clean build took 27 minutes (wall) on 2 x86 cores shared with other jobs;
# qemu then needs about a minute per question on such a machine.
#
#   sudo apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user cmake
#   scripts/arm_cross_smoke.sh [QUESTIONS]          # default: the first 40 questions of eval.jsonl
#   ARCH=armv8-a CPU=cortex-a72 scripts/arm_cross_smoke.sh      # the Pi 4 build
#   nohup nice -n 19 scripts/arm_cross_smoke.sh 12 &    # shared machine; nohup: a paused
#                                                       # job is sent SIGHUP when its shell exits
#
# Run it from the project's venv (edgestack and llama-cpp-python installed): the host side
# quantizes the extra models and gives the x86 answers to compare with.
#
# Environment: SDIST (an unpacked llama-cpp-python 0.3.36 sdist, the llama.cpp edgestack runs;
# `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` and untar it),
# OUT (build folder, default /tmp/edgestack-arm/$ARCH), ARCH (-march; the default is the Pi 5's,
# armv8-a is the Pi 4's), CPU (what qemu emulates: cortex-a76 = Pi 5, cortex-a72 = Pi 4),
# THREADS (llama.cpp threads on both sides, default 1), QUANTS (extra weight types to run,
# requantized from the bundled Q8_0 base by `edgestack quantize`; default "q4_0 iq4_nl", "" for
# none), QUANT_N (how many questions those run, default 10: they check kernels, not accuracy).
#
# What runs on the emulated CPU: libllama built like the README's portable Pi build
# (GGML_NATIVE off, -march=$ARCH instead of -mcpu=native), driven by scripts/arm_smoke/
# stack_smoke.c, which runs models/word-problems the way edgestack does (32-token micro-batches,
# flash attention, each stage's adapter on one context, greedy, stop at a newline). The same C
# program is built for the host against llama-cpp-python's own libllama, and `edgestack eval` runs
# the same questions, so the ARM answers are compared with eval.jsonl, with the x86 C driver (line
# by line, every stage) and with edgestack on x86. llama.cpp's log under qemu says which CPU
# features it saw and which tensors it repacked. Python and edgestack itself do not run under qemu
# (that needs an aarch64 Python and numpy; a Pi has them), and qemu's speed says nothing about a
# Pi's. Exit status: 0 when every Q8_0 answer under qemu is right and identical to the x86 ones.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
SDIST=${SDIST:-/tmp/sdist/llama_cpp_python-0.3.36}
ARCH=${ARCH:-armv8.2-a+dotprod+fp16}
CPU=${CPU:-cortex-a76}
OUT=${OUT:-/tmp/edgestack-arm/$ARCH}
THREADS=${THREADS:-1}
QUANTS=${QUANTS-q4_0 iq4_nl}
N=${1:-40}
QUANT_N=${QUANT_N:-10}
STACK=$HERE/models/word-problems
SYSROOT=/usr/aarch64-linux-gnu
PYTHON=${PYTHON:-python3}

for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ qemu-aarch64 cmake gcc edgestack; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: sudo apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu" \
            "qemu-user cmake gcc, and run from the project's venv (edgestack)" >&2
        exit 2
    }
done
[ -f "$SDIST/vendor/llama.cpp/CMakeLists.txt" ] || {
    echo "no llama.cpp sources at $SDIST/vendor/llama.cpp; set SDIST (see the header)" >&2
    exit 2
}
HOSTLIB=$("$PYTHON" -c 'import importlib.util as u, os
print(os.path.join(u.find_spec("llama_cpp").submodule_search_locations[0], "lib"))') || {
    echo "llama-cpp-python is not importable by $PYTHON; activate the project's venv" >&2
    exit 2
}
INCLUDES=(-I "$SDIST/vendor/llama.cpp/include" -I "$SDIST/vendor/llama.cpp/ggml/include")

mkdir -p "$OUT"
echo "building libllama for aarch64 -march=$ARCH in $OUT/build (log: $OUT/build.log)" >&2
fresh=$([ -f "$OUT/build/bin/libllama.so" ] && echo incremental || echo clean)
TIMEFORMAT='%R %U %S'  # wall, user CPU and system CPU seconds of the configure and build
{ time {
cmake -S "$SDIST/vendor/llama.cpp" -B "$OUT/build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    -DCMAKE_FIND_ROOT_PATH="$SYSROOT" -DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER \
    -DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH="$ARCH" -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF \
    >"$OUT/cmake.log" 2>&1
cmake --build "$OUT/build" -j "$(nproc)" --target llama >"$OUT/build.log" 2>&1
}; } 2>"$OUT/build.time"
LIBDIR=$(dirname "$(find "$OUT/build" -name 'libllama.so' | head -n 1)")
aarch64-linux-gnu-gcc -O2 -Wall -o "$OUT/stack_smoke" "$HERE/scripts/arm_smoke/stack_smoke.c" \
    "${INCLUDES[@]}" -L "$LIBDIR" -lllama -Wl,-rpath,"$LIBDIR"
gcc -O2 -Wall -o "$OUT/stack_smoke_host" "$HERE/scripts/arm_smoke/stack_smoke.c" \
    "${INCLUDES[@]}" -L "$HOSTLIB" -lllama -Wl,-rpath,"$HOSTLIB"
file -L "$OUT/stack_smoke" "$LIBDIR/libllama.so" | sed "s|$OUT/||; s|, BuildID.*||" >&2

"$PYTHON" - "$STACK/eval.jsonl" "$N" >"$OUT/questions.txt" <<'EOF'
import json, sys
for line in open(sys.argv[1]).read().splitlines()[: int(sys.argv[2])]:
    print(json.loads(line)["question"])
EOF
head -n "$QUANT_N" "$OUT/questions.txt" >"$OUT/questions.quant.txt"

# The stack as stack.toml says (templates, adapters, max_tokens); the driver takes it as arguments.
STAGES=(
    extract "$STACK/extract.lora.gguf" 16 $'Question: {question}\nExpression:'
    compute "$STACK/compute.lora.gguf" 8 $'Expression: {extract}\nResult:'
    answer "$STACK/answer.lora.gguf" 40 $'Question: {question}\nExpression: {extract}\nResult: {compute}\nAnswer:'
)
models=(q8_0)
for q in $QUANTS; do
    [ -f "$OUT/base.$q.gguf" ] || edgestack quantize "$STACK/base.q8_0.gguf" -o "$OUT/base.$q.gguf" \
        -t "$q" --allow-requantize --threads "$THREADS" >&2
    models+=("$q")
done
for q in "${models[@]}"; do
    model=$STACK/base.q8_0.gguf questions=$OUT/questions.txt
    [ "$q" = q8_0 ] || model=$OUT/base.$q.gguf questions=$OUT/questions.quant.txt
    echo "running $q: x86 driver, then aarch64 under qemu -cpu $CPU" \
        "($(wc -l <"$questions") questions)" >&2
    start=$(date +%s%N)
    "$OUT/stack_smoke_host" "$model" "$questions" "$THREADS" "${STAGES[@]}" \
        >"$OUT/host.$q.txt" 2>"$OUT/host.$q.log"
    echo $((($(date +%s%N) - start) / 1000000)) >"$OUT/host.$q.ms"
    start=$(date +%s%N)
    status=0
    QEMU_LD_PREFIX=$SYSROOT qemu-aarch64 -cpu "$CPU" "$OUT/stack_smoke" "$model" \
        "$questions" "$THREADS" "${STAGES[@]}" \
        >"$OUT/arm.$q.txt" 2>"$OUT/qemu.$q.log" || status=$?
    echo $((($(date +%s%N) - start) / 1000000)) >"$OUT/arm.$q.ms"
    echo "$status" >"$OUT/arm.$q.status"
done
if [ "$CPU" != cortex-a72 ]; then
    # The same build on a Pi 4's CPU (no dotprod, no fp16 arithmetic): exit 132 is SIGILL.
    head -n 1 "$OUT/questions.txt" >"$OUT/questions.one.txt"
    status=0
    ulimit -c 0  # no core file from the expected crash
    QEMU_LD_PREFIX=$SYSROOT qemu-aarch64 -cpu cortex-a72 "$OUT/stack_smoke" "$STACK/base.q8_0.gguf" \
        "$OUT/questions.one.txt" 1 "${STAGES[@]}" >"$OUT/a72.txt" 2>"$OUT/a72.log" || status=$?
    echo "the -march=$ARCH build under qemu -cpu cortex-a72 (a Pi 4's CPU): exit $status"
fi
edgestack eval --stack "$STACK" --limit "$N" --threads "$THREADS" --force \
    --report "$OUT/edgestack_eval.json" >"$OUT/edgestack_eval.txt" 2>&1

"$PYTHON" - "$STACK/eval.jsonl" "$OUT" "$(cat "$OUT/build.time")" "$fresh" "$CPU" "$ARCH" "$N" "${models[@]}" <<'EOF'
import json
import re
import sys
from collections import Counter
from pathlib import Path

data, out, built, fresh, cpu, arch, n, *models = sys.argv[1:]
out = Path(out)
expected = [json.loads(x)["answer"] for x in open(data).read().splitlines()][: int(n)]
edgestack = [
    " | ".join(case["stages"].values())
    for case in json.loads((out / "edgestack_eval.json").read_text())["cases"]
]


def right(lines: list[str]) -> int:
    count = 0
    for want, line in zip(expected, lines):
        numbers = re.findall(r"-?\d+", line.rsplit(" | ", 1)[-1])
        count += bool(numbers) and int(numbers[-1]) == want
    return count


def same(a: list[str], b: list[str]) -> int:
    return sum(x == y for x, y in zip(a, b))


wall, user, system = (float(x) for x in built.split())
print(f"aarch64 -march={arch} under qemu-aarch64 -cpu {cpu}; libllama {fresh} build: {wall:.0f} s "
      f"wall, {user + system:.0f} s CPU")
ok = True
for q in models:
    arm = (out / f"arm.{q}.txt").read_text().splitlines()
    host = (out / f"host.{q}.txt").read_text().splitlines()
    status = int((out / f"arm.{q}.status").read_text())
    log = (out / f"qemu.{q}.log").read_text()
    arm_s = int((out / f"arm.{q}.ms").read_text()) / 1000
    host_s = int((out / f"host.{q}.ms").read_text()) / 1000
    info = re.search(r"system_info: (.*)", log)
    repacked = Counter(m.group(1) for m in re.finditer(r"repack tensor \S+ with (\S+)", log))
    buffers = sorted(set(re.findall(r"(\S+) model buffer size = +([\d.]+ MiB)", log)))
    fallback = re.search(r"tensor '(\S+)' \((\S+)\) \(and (\d+) others\) cannot be used", log)
    asked = (out / ("questions.txt" if q == "q8_0" else "questions.quant.txt")).read_text()
    asked = asked.count("\n")
    line = (
        f"{q}: exit {status}; {len(arm)}/{asked} answered, {right(arm)} right under qemu, "
        f"{right(host)} right on x86; identical to the x86 driver in {same(arm, host)}/{len(host)}"
    )
    if q == "q8_0":
        line += f", to edgestack on x86 in {same(arm, edgestack)}/{len(edgestack)}"
        line += f" (x86 driver = edgestack in {same(host, edgestack)}/{len(edgestack)})"
        ok = status == 0 and len(arm) == int(n) == right(arm) == same(arm, host)
    print(line)
    print(f"  {arm_s / max(len(arm), 1):.3f} s/question under qemu, "
          f"{host_s / max(len(host), 1):.3f} on x86 "
          f"(wall time, 1 thread each: {arm_s / host_s:.0f}x; not a Pi's speed)")
    print(f"  {info.group(1).strip() if info else 'no system_info line'}")
    print("  buffers: " + ", ".join(f"{b} {size}" for b, size in buffers))
    print("  repacked: " + (", ".join(f"{c} tensors as {t}" for t, c in repacked.items()) or "none")
          + (f"; left in the CPU buffer: {int(fallback.group(3)) + 1} ({fallback.group(1)}, "
             "biases, norms)"
             if fallback else ""))
    for a, h in list(zip(arm, host))[:2]:
        print(f"  arm: {a}\n  x86: {h}")
sys.exit(0 if ok else 1)
EOF
