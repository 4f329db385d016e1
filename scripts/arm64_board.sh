#!/usr/bin/env bash
# Inside the arm64 root of scripts/arm64_check.sh (the emulated board): docs/raspberry-pi.md's steps as
# a Pi user runs them, from the checkout this script is in.
#
#   arm64_board.sh venv|build|install|doc|tests|shell [COMMAND ...]
#
# Set by arm64_check.sh: BOARD, WHEEL_BOARD, CMAKE_ARGS_FOR_BOARD, WHEELS (the kept wheel), BUILD
# (cross: CC/CXX are the x86-64 cross compiler's wrappers), CMAKE_BUILD_PARALLEL_LEVEL.
set -euo pipefail
cd "$(dirname "$0")/.."
STARTED=$(date +%s)
LLAMA_CPP=$(grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')
DEMO_LINES=('这家餐厅的服务太差了，我再也不会来了。' 'The battery life is amazing and the screen is gorgeous.'
            '你好！请用两句话介绍一下长城。' 'What should I cook tonight? Give me one quick idea.')
# Model tests that cover the engine's paths (tests/...::name): the head's early stop, texts evaluated
# together, a chat reply, a kept prefix, a saved prefix loaded by a new engine.
MODEL_TESTS=(
    "tests/test_batching.py::test_the_route_head_stops_llama_cpp_at_its_block"
    "tests/test_batching.py::test_texts_classified_together_get_the_labels_they_get_one_at_a_time"
    "tests/test_chat.py::test_reply_respects_max_tokens"
    "tests/test_engine.py::test_kept_prefix_gives_the_same_logits_as_a_fresh_evaluation"
    "tests/test_engine.py::test_a_new_engine_loads_a_saved_prefix_instead_of_evaluating_it"
)

say() { printf '== [%s %s] %s\n' "$BOARD" "$(date -u -d @$(( $(date +%s) - STARTED )) +%M:%S)" "$*"; }
timed() { local start=$(date +%s); "$@"; say "($(( $(date +%s) - start )) s: $*)" >&2; }

venv() {
    say "step 1: uname -m: $(uname -m), dpkg --print-architecture: $(dpkg --print-architecture), $(python3 --version)"
    [ "$(uname -m)" = aarch64 ] && [ "$(dpkg --print-architecture)" = arm64 ] || { echo "not an aarch64/arm64 system" >&2; exit 1; }
    [ -x .venv/bin/python ] || { say "step 3: python3 -m venv .venv"; python3 -m venv .venv; }
}

build() {
    . .venv/bin/activate
    local log=$WHEELS.build.log partial=$WHEELS.partial
    rm -rf "$partial" && mkdir -p "$partial"
    if [ "$BUILD" = cross ]; then
        export CC=/usr/local/lib/x86-cross/cc CXX=/usr/local/lib/x86-cross/c++
        say "compiling with Debian's x86-64 aarch64 cross GCC: $($CC --version | head -1); the board's own: $(gcc --version | head -1)"
    fi
    say "step 3: CMAKE_ARGS=\"$CMAKE_ARGS_FOR_BOARD\" pip install $LLAMA_CPP -v (as a wheel kept in the cache; log: ${log#$HOME/})"
    local start=$(date +%s)
    CMAKE_ARGS="$CMAKE_ARGS_FOR_BOARD" pip wheel --no-deps --no-cache-dir -w "$partial" "$LLAMA_CPP" -v > "$log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null; do  # progress: ninja's last [n/m] line, once a minute
        sleep 60
        printf '   %s compiled after %s min\n' "$(grep -o '^ *\[[0-9]*/[0-9]*\]' "$log" | tail -1 | tr -d ' ')" "$(( ($(date +%s) - start) / 60 ))"
    done
    wait $pid || { tail -20 "$log"; echo "the llama-cpp-python build failed: see $log" >&2; exit 1; }
    grep -m1 'Adding CPU backend variant' "$log" || true
    mkdir -p "$WHEELS" && mv "$partial"/*.whl "$WHEELS"/ && rmdir "$partial"
    say "built $(basename "$WHEELS"/*.whl) in $(( ($(date +%s) - start) / 60 )) min"
}

install() {
    . .venv/bin/activate
    local wheel=("$WHEELS"/llama_cpp_python-*.whl)
    if [ "$(cat .venv/.llama-cpp-wheel 2>/dev/null)" != "$(sha256sum "${wheel[0]}")" ]; then
        say "step 3: installing the $WHEEL_BOARD build of $LLAMA_CPP"
        pip install -q --force-reinstall --no-deps "${wheel[0]}"
        sha256sum "${wheel[0]}" > .venv/.llama-cpp-wheel
    fi
    say "step 4: pip install . (edgeqwen and its dependencies)"
    timed pip install -q --progress-bar off .
    say "step 3's check: $(python -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode().strip())')"
}

doc() {
    . .venv/bin/activate
    say "the model: python scripts/fetch_standin.py (make model; on a Pi: copied from the machine that built it)"
    timed python scripts/fetch_standin.py --models-dir models
    export EDGEQWEN_MODEL=$PWD/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  # models/ may hold others (measurements)
    if [ "$WHEEL_BOARD" != "$BOARD" ]; then
        mismatch
        return
    fi
    say "edgeqwen doctor"
    timed edgeqwen doctor
    say "step 4: edgeqwen run \"这家餐厅的服务太差了\" (the first run evaluates and saves the role's prefix)"
    timed edgeqwen run "这家餐厅的服务太差了"
    say "make demo's inputs: edgeqwen run - (each line routed to sentiment or chat; replies stream)"
    timed edgeqwen run - < <(printf '%s\n' "${DEMO_LINES[@]}")
}

# A build for another board's CPU: doctor and a run must each refuse it in one line, before any model
# code runs into an illegal instruction (exit 132, "core dumped").
mismatch() {
    say "a $WHEEL_BOARD build on the $BOARD CPU: edgeqwen doctor must refuse it"
    local status=0 err
    err=$(edgeqwen doctor 2>&1 >/dev/null) || status=$?
    echo "$err" | grep -v '^warning:' || true
    [ $status = 1 ] && echo "$err" | grep -q '^error: this llama.cpp build uses' || { echo "FAIL: doctor exit $status" >&2; exit 1; }
    say "edgeqwen run must refuse it too"
    status=0
    err=$(edgeqwen run --task sentiment "这家餐厅的服务太差了" 2>&1 >/dev/null) || status=$?
    echo "$err"
    [ $status = 1 ] && [ "$(echo "$err" | wc -l)" = 1 ] || { echo "FAIL: run exit $status" >&2; exit 1; }
    say "refused as it should be (doctor exit 1, run exit 1 in one line, no illegal instruction)"
}

tests() {
    . .venv/bin/activate
    command -v curl >/dev/null || { say "curl (Raspberry Pi OS has it; the server tests call it)"; apt-get install -y -qq curl >/dev/null; }
    say "test tools: pip install '.[test]' (make test-fast's)"
    timed pip install -q --progress-bar off '.[test]'
    say "make test-fast: the tests that need no model file (in a copy of the checkout without models/)"
    local fast=/tmp/edgeqwen-fast-$BOARD
    rm -rf "$fast" && mkdir -p "$fast" && tar --exclude=./models --exclude=./.venv -cf - . | tar -xf - -C "$fast"
    (cd "$fast" && EDGEQWEN_MODEL=/nonexistent/model.gguf timed python -m pytest -q -p no:cacheprovider -m "not model") \
        || { echo "FAIL: the fast tests" >&2; exit 1; }
    say "model tests that cover the engine's paths (no per-test time limit: emulated): ${MODEL_TESTS[*]##*::}"
    timed python -m pytest -q -p no:cacheprovider --timeout=0 "${MODEL_TESTS[@]}"
}

case ${1:-} in
    venv|build|install|doc|tests) "$1" ;;
    shell) shift; . .venv/bin/activate; exec "$@" ;;
    *) echo "usage: arm64_board.sh venv|build|install|doc|tests|shell COMMAND" >&2; exit 2 ;;
esac
