"""This board: RAM (and a container's limit), CPU cores (big cores on big.LITTLE), SIMD features.

Read from /proc and /sys only; the engine takes its default thread count from here and
`edgeqwen doctor` reports the rest.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

# CPU flags worth knowing for llama.cpp: x86 from /proc/cpuinfo "flags", ARM from "Features".
X86_FEATURES = ("pni", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni")
ARM_FEATURES = {"asimd": "NEON (asimd)", "asimddp": "dotprod (asimddp)", "asimdhp": "fp16 arithmetic (asimdhp)", "i8mm": "i8mm", "sve": "SVE"}


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
    return Memory(total=values.get("MemTotal"), available=values.get("MemAvailable", values.get("MemFree")), cgroup_limit=_cgroup_limit(values.get("MemTotal")))


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


def cpu_features(cpuinfo: str | None = None, machine: str | None = None) -> dict[str, bool]:
    """The CPU's SIMD features that matter to llama.cpp (what the CPU has, not what the build uses)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    machine = machine or platform.machine()
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.M)
    flags = set(match[1].split()) if match else set()
    if machine.lower() in ("aarch64", "arm64") or machine.lower().startswith("arm"):
        return {name: flag in flags for flag, name in ARM_FEATURES.items()}
    return {("sse3" if flag == "pni" else flag): flag in flags for flag in X86_FEATURES}  # the kernel calls SSE3 "pni"


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None
