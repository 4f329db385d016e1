"""This board: RAM (and a container's limit), CPU cores (big cores on big.LITTLE), SIMD features,
and whether a llama.cpp build's instruction set fits this CPU.

Read from /proc and /sys only; the engine takes its default thread count from here and checks its
build against the CPU before loading; `edgeqwen doctor` reports the rest.
"""

from __future__ import annotations

import os
import platform
import re
import struct
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# CPU flags worth knowing for llama.cpp: x86 from /proc/cpuinfo "flags", ARM from "Features".
X86_FEATURES = ("pni", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx_vnni")
ARM_FEATURES = {"asimd": "NEON (asimd)", "asimddp": "dotprod (asimddp)", "asimdhp": "fp16 arithmetic (asimdhp)",
                "i8mm": "i8mm", "sve": "SVE"}
# aarch64 hardware capabilities by their /proc/cpuinfo names: (auxv entry, bit) from the kernel's
# uapi/asm/hwcap.h. AT_HWCAP is entry 16, AT_HWCAP2 entry 26.
ARM_HWCAP_BITS = {
    "fp": (16, 0), "asimd": (16, 1), "atomics": (16, 8), "fphp": (16, 9), "asimdhp": (16, 10),
    "asimdrdm": (16, 12), "asimddp": (16, 20), "sve": (16, 22), "i8mm": (26, 13), "sme": (26, 23),
}
# What a llama.cpp build's feature line (llama_print_system_info) says it was compiled for, and the
# CPU flag each needs; code built for a feature the CPU lacks dies with SIGILL.
BUILD_NEEDS = {
    "NEON": "asimd", "FP16_VA": "asimdhp", "DOTPROD": "asimddp", "MATMUL_INT8": "i8mm", "SVE": "sve", "SME": "sme",
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}
# The CMAKE_ARGS docs/raspberry-pi.md gives per board (step 3).
ARM_DOTPROD_FLAGS = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16 -DLLAVA_BUILD=OFF"
ARM_BASE_FLAGS = "-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8-a -DLLAVA_BUILD=OFF"
NATIVE_FLAGS = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"


@dataclass
class Memory:
    total: int | None
    available: int | None
    cgroup_limit: int | None  # a container's memory limit, when lower than the RAM

    @property
    def usable(self) -> int | None:
        """What a process here can use: available RAM, capped by the cgroup limit."""
        values = [v for v in (self.available, self.cgroup_limit) if v]
        return min(values) if values else None


@dataclass
class Cores:
    logical: int
    usable: int
    physical: int  # what the engine uses by default: physical cores, big cores only on big.LITTLE
    big_little: bool
    capacities: list[int] = field(default_factory=list)


def physical_cores() -> int:
    """Threads worth giving llama.cpp: one per physical core, and on big.LITTLE boards only the big cores."""
    usable = _usable_cpus()
    capacities = _capacities(usable)
    if len(set(capacities)) > 1:
        return capacities.count(max(capacities))  # e.g. RK3588: the four A76 cores, not the A55s
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return len(usable)
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))  # x86: SMT siblings share one
    return max(1, min(len(usable), len(cores))) if cores else len(usable)


def read_memory(meminfo: str | None = None) -> Memory:
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            meminfo = ""
    values = {m[1]: int(m[2]) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", meminfo, re.M)}
    return Memory(total=values.get("MemTotal"), available=values.get("MemAvailable", values.get("MemFree")),
                  cgroup_limit=_cgroup_limit(values.get("MemTotal")))


def _cgroup_limit(total: int | None) -> int | None:
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's cgroup, if it is a real limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.max")
        elif "memory" in controllers.split(","):
            candidates.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.limit_in_bytes")
    for candidate in candidates:
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            return int(text)
    return None


def read_cores() -> Cores:
    usable = _usable_cpus()
    capacities = _capacities(usable)
    return Cores(
        logical=os.cpu_count() or len(usable),
        usable=len(usable),
        physical=physical_cores(),
        big_little=len(set(capacities)) > 1,
        capacities=capacities,
    )


def _usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _capacities(cpus: list[int]) -> list[int]:
    """Each CPU's relative capacity (differs between big and little cores); [] where the kernel does not say."""
    capacities = [_read_int(f"/sys/devices/system/cpu/cpu{cpu}/cpu_capacity") for cpu in cpus]
    return [] if None in capacities else capacities


def cpu_flags(cpuinfo: str | None = None, auxv: bytes | None = None, machine: str | None = None) -> set[str]:
    """The CPU's feature flags, by their /proc/cpuinfo names.

    On ARM they come from the kernel's hardware capabilities (/proc/self/auxv) when it has them: that
    is what the CPU can run, and qemu's user-mode emulation passes the emulated CPU's there while its
    /proc/cpuinfo shows the host's. Otherwise, and on x86, from /proc/cpuinfo.
    """
    if _is_arm(machine or platform.machine()):
        if auxv is None and cpuinfo is None and _is_arm(platform.machine()):  # this process's own, on ARM only
            auxv = _read_bytes("/proc/self/auxv")
        from_auxv = hwcap_flags(auxv) if auxv else set()
        if from_auxv:
            return from_auxv
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)
    return set(match[1].split()) if match else set()


def hwcap_flags(auxv: bytes) -> set[str]:
    """ARM feature flags from a 64-bit little-endian auxiliary vector (pairs of type and value)."""
    entries = dict(struct.iter_unpack("<QQ", auxv[: len(auxv) // 16 * 16]))
    return {name for name, (entry, bit) in ARM_HWCAP_BITS.items() if entries.get(entry, 0) >> bit & 1}


def cpu_features(cpuinfo: str | None = None, machine: str | None = None, auxv: bytes | None = None) -> dict[str, bool]:
    """The CPU's SIMD features that matter to llama.cpp (what the CPU has, not what the build uses)."""
    machine = machine or platform.machine()
    flags = cpu_flags(cpuinfo, auxv, machine)
    if _is_arm(machine):
        return {name: flag in flags for flag, name in ARM_FEATURES.items()}
    return {("sse3" if flag == "pni" else flag): flag in flags for flag in X86_FEATURES}  # the kernel calls SSE3 "pni"


def build_features(system_info: str) -> set[str]:
    """The features a llama.cpp feature line says are compiled in ("CPU : NEON = 1 | DOTPROD = 1 | ...")."""
    return {m[1] for m in re.finditer(r"([A-Z0-9_]+) = 1\b", system_info)}


def missing_build_features(system_info: str, flags: set[str]) -> list[str]:
    """Features the build was compiled for that a CPU with these flags lacks (empty: the build fits)."""
    return sorted(f for f in build_features(system_info) if f in BUILD_NEEDS and BUILD_NEEDS[f] not in flags)


def rebuild_flags(flags: set[str], machine: str | None = None) -> str:
    """The CMAKE_ARGS that fit a CPU with these flags (docs/raspberry-pi.md, step 3)."""
    if not _is_arm(machine or platform.machine()):
        return NATIVE_FLAGS
    return ARM_DOTPROD_FLAGS if {"asimddp", "asimdhp"} <= flags else ARM_BASE_FLAGS


def build_mismatch(system_info: str, flags: set[str] | None = None, machine: str | None = None) -> str | None:
    """One line saying why this llama.cpp build cannot run on this CPU and how to rebuild it; None if it fits."""
    flags = cpu_flags(machine=machine) if flags is None else flags
    missing = missing_build_features(system_info, flags)
    if not missing:
        return None
    return (f"this llama.cpp build uses {', '.join(missing)}, which this CPU lacks (it would die with an illegal "
            f"instruction); {rebuild_advice(flags, machine)}")


def rebuild_advice(flags: set[str] | None = None, machine: str | None = None) -> str:
    """How to rebuild llama-cpp-python for a CPU with these flags (this one's by default)."""
    flags = cpu_flags(machine=machine) if flags is None else flags
    return (f'rebuild it: CMAKE_ARGS="{rebuild_flags(flags, machine)}" pip install --force-reinstall --no-deps '
            f"--no-cache-dir llama-cpp-python{_installed_version()}")


def _installed_version() -> str:
    """"==0.3.36" for the installed llama-cpp-python ("" when its metadata cannot be read)."""
    try:
        return "==" + metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return ""


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm")


def _read_bytes(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
