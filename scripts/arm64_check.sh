#!/usr/bin/env bash
# `make arm64-check`: edgeqwen on an emulated Raspberry Pi CPU, doing what docs/raspberry-pi.md tells a Pi user.
#
#   scripts/arm64_check.sh [STEP ...] [-- COMMAND ...]
#
# On a Debian x86-64 host (as root) it installs qemu-user-static and debootstrap, lets the kernel run
# aarch64 programs through qemu (binfmt_misc), and builds a Debian bookworm arm64 root under the cache
# folder (Raspberry Pi OS Bookworm is this Debian), reused by later runs. Inside that root, with the
# emulated CPU of the chosen board, the steps are:
#   doc    (default) the guide's steps: check the OS, a venv, llama-cpp-python built with the board's
#          CMAKE_ARGS, `pip install .`, the model, `edgeqwen doctor`, the demo's inputs (labels and chat replies)
#   tests  the fast tests (no model), then model tests that cover the engine's paths
#   shell  `-- COMMAND ...` runs COMMAND in the checkout with the venv active (e.g. scripts/memory_peaks.py);
#          ARM64_CACHE/results is /home/pi/edgeqwen-cache/results there, for what it writes
#
# Settings (environment or make variables):
#   BOARD=pi5|pi4        the emulated CPU: Cortex-A76 (Pi 5, dotprod build) or Cortex-A72 (Pi 4, armv8-a build)
#   WHEEL_BOARD=pi5|pi4  install the llama.cpp built for that board instead (pi5 on pi4: doctor must refuse it)
#   ARM64_CACHE=DIR      where the root, the built wheels, the model and the logs live (default /var/cache/edgeqwen-arm64)
#   ARM64_SLOT=NAME      a checkout and venv of its own in the root, for a run beside another on the same board
#   ARM64_BUILD=cross|emulated  who compiles llama.cpp inside the root's `pip`: Debian's x86-64 aarch64 cross
#                        GCC 12 (the same compiler release as the root's own, run natively; about 12 min), or the
#                        root's own GCC under emulation (what a Pi does; about 40 min or more here)
#
# The built wheel is kept per board under ARM64_CACHE/wheels/ and reused on later runs (as pip's own
# cache does on a Pi); delete it to build again. Everything emulated runs under `nice -n 19`; emulated
# times say nothing about a Pi's speed (about 500x slower than native here).
set -euo pipefail

BOARD=${BOARD:-pi5}
WHEEL_BOARD=${WHEEL_BOARD:-$BOARD}
CACHE=${ARM64_CACHE:-/var/cache/edgeqwen-arm64}
BUILD=${ARM64_BUILD:-cross}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$CACHE/bookworm-arm64
HOME_IN=/home/pi                      # the user's home inside the root
# One checkout (and venv) per board, build and ARM64_SLOT (a name), so that runs of each can go on at once.
CHECKOUT_IN=$HOME_IN/$BOARD$([ "$WHEEL_BOARD" = "$BOARD" ] || echo "-$WHEEL_BOARD-build")${ARM64_SLOT:+-$ARM64_SLOT}/edgeqwen
STARTED=$(date +%s)

# The CMAKE_ARGS of docs/raspberry-pi.md, step 3 (tests/test_arm64_check.py keeps the three in step).
PI5_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DLLAVA_BUILD=OFF"
PI4_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a -DLLAVA_BUILD=OFF"

say() { printf '== [%s] %s\n' "$(date -u -d @$(( $(date +%s) - STARTED )) +%H:%M:%S)" "$*"; }
die() { echo "arm64-check: $*" >&2; exit 1; }

board_cpu() { case $1 in pi5) echo cortex-a76 ;; pi4) echo cortex-a72 ;; *) die "BOARD must be pi5 or pi4, not '$1'" ;; esac; }
board_flags() { case $1 in pi5) echo "$PI5_CMAKE_ARGS" ;; pi4) echo "$PI4_CMAKE_ARGS" ;; esac; }
QEMU_CPU=$(board_cpu "$BOARD")
board_cpu "$WHEEL_BOARD" >/dev/null
case $BUILD in cross|emulated) ;; *) die "ARM64_BUILD must be cross or emulated, not '$BUILD'" ;; esac

# -- the host ---------------------------------------------------------------------------------

host_setup() {
    [ "$(id -u)" = 0 ] || die "needs root (apt-get, binfmt_misc, chroot)"
    command -v apt-get >/dev/null || die "needs a Debian or Ubuntu host (apt-get)"
    [ "$(uname -m)" = x86_64 ] || die "runs on an x86-64 host (this is $(uname -m))"
    local packages="qemu-user-static debootstrap"
    [ "$BUILD" = cross ] && packages="$packages crossbuild-essential-arm64"
    local missing=""
    for package in $packages; do dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"; done
    if [ -n "$missing" ]; then
        say "installing$missing"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        say "registering qemu-aarch64 with binfmt_misc"
        cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
    fi
    mkdir -p "$CACHE/logs"
}

# -- the arm64 root ---------------------------------------------------------------------------

make_root() {
    exec 8>"$CACHE/.root.lock"
    flock 8
    if [ ! -e "$ROOT/.edgeqwen-root-ready" ]; then
        local partial=$ROOT.partial
        rm -rf "$partial"
        say "debootstrap, first stage: Debian bookworm arm64 into $partial"
        debootstrap --arch=arm64 --foreign --variant=minbase bookworm "$partial" "$MIRROR" > "$CACHE/logs/debootstrap.log" 2>&1 \
            || die "debootstrap failed: $CACHE/logs/debootstrap.log"
        say "debootstrap, second stage (emulated, a few minutes)"
        nice -n 19 chroot "$partial" /debootstrap/debootstrap --second-stage >> "$CACHE/logs/debootstrap.log" 2>&1 \
            || die "debootstrap --second-stage failed: $CACHE/logs/debootstrap.log"
        cp /etc/resolv.conf "$partial/etc/resolv.conf"
        say "docs/raspberry-pi.md step 1: apt install build-essential cmake git python3-venv python3-dev (emulated, a few minutes)"
        mount -t proc proc "$partial/proc"
        nice -n 19 chroot "$partial" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
            sh -c 'apt-get update -qq && apt-get install -y -qq build-essential cmake git python3-venv python3-dev ca-certificates curl' \
            > "$CACHE/logs/apt.log" 2>&1 || { umount "$partial/proc"; die "apt-get in the root failed: $CACHE/logs/apt.log"; }
        umount "$partial/proc"
        touch "$partial/.edgeqwen-root-ready"
        mv "$partial" "$ROOT"
    fi
    flock -u 8
}

# Mounts are shared by runs that overlap; the last one out takes them down.
CACHE_DIRS=(models wheels results)  # ARM64_CACHE/<dir> is /home/pi/edgeqwen-cache/<dir> inside the root
MOUNTS=(proc dev "${CACHE_DIRS[@]/#/${HOME_IN#/}/edgeqwen-cache/}")
mount_root() {
    exec 9>"$CACHE/.in-use"
    flock -s 9
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    local dir
    for dir in "${CACHE_DIRS[@]}"; do
        mkdir -p "$CACHE/$dir" "$ROOT$HOME_IN/edgeqwen-cache/$dir"
        mountpoint -q "$ROOT$HOME_IN/edgeqwen-cache/$dir" || mount --bind "$CACHE/$dir" "$ROOT$HOME_IN/edgeqwen-cache/$dir"
    done
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    # The host's CA bundle: pip and the model fetch reach PyPI through whatever this host trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
    trap unmount_root EXIT
}

unmount_root() {
    [ "$CROSS_ON" = 1 ] && cross_compiler_off
    if flock -n -x 9; then  # no other run inside
        for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do
            mountpoint -q "$ROOT/${MOUNTS[i]}" && umount "$ROOT/${MOUNTS[i]}"
        done
    fi
    say "done ($BOARD, $(( ($(date +%s) - STARTED) / 60 )) min)"
}

# The x86-64 cross compiler, reachable inside the root only while llama.cpp builds: the host's /usr
# (read-only) at /opt/x86-64/usr, its dynamic loader at /lib64, the cross toolchain's target files at
# /usr/aarch64-linux-gnu, and cc/c++ wrappers that the root's pip hands to CMake as CC and CXX.
CROSS_LINKS=(opt/x86-64/usr usr/aarch64-linux-gnu)
CROSS_ON=0
cross_compiler_on() {
    CROSS_ON=1
    mkdir -p "$ROOT/opt/x86-64/usr" "$ROOT/usr/aarch64-linux-gnu" "$ROOT/lib64" "$ROOT/usr/local/lib/x86-cross"
    mount --bind /usr "$ROOT/opt/x86-64/usr" && mount -o remount,bind,ro "$ROOT/opt/x86-64/usr"
    mount --bind /usr/aarch64-linux-gnu "$ROOT/usr/aarch64-linux-gnu" && mount -o remount,bind,ro "$ROOT/usr/aarch64-linux-gnu"
    ln -sf /opt/x86-64/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$ROOT/lib64/ld-linux-x86-64.so.2"
    local tool
    for tool in cc:gcc c++:g++; do
        printf '#!/bin/sh\nLD_LIBRARY_PATH=/opt/x86-64/usr/lib/x86_64-linux-gnu exec /opt/x86-64/usr/bin/aarch64-linux-gnu-%s-12 "$@"\n' \
            "${tool#*:}" > "$ROOT/usr/local/lib/x86-cross/${tool%%:*}"
        chmod +x "$ROOT/usr/local/lib/x86-cross/${tool%%:*}"
    done
}

cross_compiler_off() {
    CROSS_ON=0
    local link
    for link in "${CROSS_LINKS[@]}"; do
        if mountpoint -q "$ROOT/$link"; then umount "$ROOT/$link"; fi
        [ -d "$ROOT/$link" ] && rmdir "$ROOT/$link" 2>/dev/null || true
    done
    rm -rf "$ROOT/usr/local/lib/x86-cross" "$ROOT/lib64"
    rmdir "$ROOT/opt/x86-64" 2>/dev/null || true
}

# The checkout a Pi user would clone: the tracked files of this working tree (edits included).
copy_checkout() {
    local dest=$ROOT$CHECKOUT_IN
    mkdir -p "$dest"
    find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
    ln -s "$HOME_IN/edgeqwen-cache/models" "$dest/models"  # the models folder lives in the cache
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' file; do [ -e "$file" ] && [ "${file%%/*}" != models ] && printf '%s\0' "$file"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$dest"
    # The stand-in model: copied from this checkout when it has it (with its sha256 stamp), else fetched inside.
    local model
    for model in "$REPO"/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "$REPO"/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.sha256; do
        [ -e "$model" ] && [ ! -e "$CACHE/models/$(basename "$model")" ] && cp -p "$model" "$CACHE/models/"
    done
    return 0
}

# Runs the board script inside the root with the board's CPU; everything it starts inherits QEMU_CPU.
in_root() {
    nice -n 19 chroot "$ROOT" /usr/bin/env -i HOME=$HOME_IN PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TERM=dumb \
        EDGEQWEN_CACHE="$(dirname "$CHECKOUT_IN")/.cache/edgeqwen" \
        QEMU_CPU="$QEMU_CPU" BOARD="$BOARD" WHEEL_BOARD="$WHEEL_BOARD" CMAKE_ARGS_FOR_BOARD="$(board_flags "$WHEEL_BOARD")" \
        WHEELS=$HOME_IN/edgeqwen-cache/wheels/$WHEEL_BOARD BUILD="$BUILD" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        bash "$CHECKOUT_IN/scripts/arm64_board.sh" "$@"
}

build_wheel() {
    if ls "$CACHE/wheels/$WHEEL_BOARD"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        say "llama-cpp-python for $WHEEL_BOARD: reusing $(ls "$CACHE/wheels/$WHEEL_BOARD"/*.whl)"
        return
    fi
    exec 7>"$CACHE/.build.lock"
    flock 7
    [ "$BUILD" = cross ] && cross_compiler_on
    in_root build
    cross_compiler_off
    flock -u 7
}

main() {
    local steps=() command=()
    while [ $# -gt 0 ]; do
        case $1 in
            --) shift; command=("$@"); break ;;
            doc|tests|shell) steps+=("$1") ;;
            *) die "unknown step '$1' (doc, tests, shell -- COMMAND)" ;;
        esac
        shift
    done
    [ ${#steps[@]} -gt 0 ] || steps=(doc)
    say "board $BOARD (QEMU_CPU=$QEMU_CPU), llama.cpp built for $WHEEL_BOARD ($BUILD compile), cache $CACHE"
    host_setup
    make_root
    mount_root
    copy_checkout
    in_root venv
    build_wheel
    in_root install
    local step
    for step in "${steps[@]}"; do
        case $step in
            doc) in_root doc ;;
            tests) in_root tests ;;
            shell) in_root shell "${command[@]}" ;;
        esac
    done
}

main "$@"; exit $?  # one line: a script edited while it runs is never read past here
