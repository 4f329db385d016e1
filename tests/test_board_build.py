"""The CPU's features from its hardware capabilities, and a llama.cpp build checked against them (no model)."""

from __future__ import annotations

import re
import struct

from edgeqwen import board
from edgeqwen.board import build_features, build_mismatch, cpu_features, cpu_flags, hwcap_flags, rebuild_flags

from conftest import REPO

# AT_HWCAP as qemu-user 7.2 reports it for the emulated cores (read from /proc/self/auxv inside the arm64 root).
CORTEX_A76_HWCAP = 0x119FFB  # Pi 5: fp asimd ... atomics fphp asimdhp asimdrdm ... asimddp
CORTEX_A72_HWCAP = 0x8FB  # Pi 4: fp asimd aes pmull sha1 sha2 crc32 cpuid
PI5_LINE = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
PI4_LINE = "CPU : NEON = 1 | ARM_FMA = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 |"
X86_CPUINFO = "processor : 0\nflags : fpu pni ssse3 avx avx2 fma f16c bmi2\n"


def auxv(hwcap: int, hwcap2: int = 0) -> bytes:
    """An auxiliary vector: (type, value) pairs of 64-bit words, AT_NULL last."""
    return b"".join(struct.pack("<QQ", key, value) for key, value in ((6, 4096), (16, hwcap), (26, hwcap2), (0, 0)))


def test_hardware_capabilities_name_the_emulated_cores_features():
    pi5, pi4 = hwcap_flags(auxv(CORTEX_A76_HWCAP)), hwcap_flags(auxv(CORTEX_A72_HWCAP))
    assert {"asimd", "asimddp", "asimdhp", "atomics"} <= pi5 and "i8mm" not in pi5
    assert "asimd" in pi4 and not {"asimddp", "asimdhp", "atomics"} & pi4
    assert "i8mm" in hwcap_flags(auxv(CORTEX_A76_HWCAP, 1 << 13))


def test_arm_reads_the_auxiliary_vector_before_cpuinfo():
    """qemu-user shows the host's /proc/cpuinfo (x86 flags) but passes the emulated CPU's capabilities."""
    assert cpu_flags(X86_CPUINFO, auxv(CORTEX_A72_HWCAP), "aarch64") == hwcap_flags(auxv(CORTEX_A72_HWCAP))
    features = cpu_features(X86_CPUINFO, "aarch64", auxv(CORTEX_A76_HWCAP))
    assert features["dotprod (asimddp)"] and features["NEON (asimd)"]
    # No capabilities in the vector (an old kernel): /proc/cpuinfo's Features line.
    assert "asimddp" in cpu_flags("Features : fp asimd asimddp\n", auxv(0), "aarch64")
    assert cpu_flags(X86_CPUINFO, auxv(CORTEX_A76_HWCAP), "x86_64") >= {"avx2", "pni"}  # x86 ignores the vector


def test_a_pi5_build_on_a_pi4_is_refused_in_one_line_with_the_flags_to_rebuild_with():
    pi4 = hwcap_flags(auxv(CORTEX_A72_HWCAP))
    message = build_mismatch(PI5_LINE, pi4, "aarch64")
    assert message and "\n" not in message
    assert "DOTPROD, FP16_VA" in message and board.ARM_BASE_FLAGS in message and "--no-cache-dir" in message
    assert build_mismatch(PI5_LINE, hwcap_flags(auxv(CORTEX_A76_HWCAP)), "aarch64") is None
    assert build_mismatch(PI4_LINE, pi4, "aarch64") is None
    assert rebuild_flags(hwcap_flags(auxv(CORTEX_A76_HWCAP)), "aarch64") == board.ARM_DOTPROD_FLAGS


def test_an_x86_build_for_newer_vector_units_is_refused_too():
    flags = cpu_flags(X86_CPUINFO, None, "x86_64")
    line = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | REPACK = 1 |"
    assert build_features(line) >= {"AVX512", "REPACK"} and "SVE_CNT" not in build_features("SVE_CNT = 16 |")
    message = build_mismatch(line, flags, "x86_64")
    assert "AVX512" in message and board.NATIVE_FLAGS in message
    assert build_mismatch(line.replace("AVX512 = 1 | ", ""), flags, "x86_64") is None


def test_the_guide_the_check_script_and_the_board_name_the_same_build_flags():
    guide = (REPO / "docs" / "raspberry-pi.md").read_text(encoding="utf-8")
    script = (REPO / "scripts" / "arm64_check.sh").read_text(encoding="utf-8")
    for flags in (board.ARM_DOTPROD_FLAGS, board.ARM_BASE_FLAGS):
        assert f"`{flags}`" in guide and f'"{flags}"' in script
    assert re.search(r'PI5_CMAKE_ARGS="%s"' % re.escape(board.ARM_DOTPROD_FLAGS), script)
    assert re.search(r'PI4_CMAKE_ARGS="%s"' % re.escape(board.ARM_BASE_FLAGS), script)
