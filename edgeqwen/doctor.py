"""`edgeqwen doctor`: what this board has, what the llama.cpp build can use, and settings that fit.

It reads the board (board.py: RAM, cores, CPU flags), asks llama.cpp what it was compiled with (and
says, with the flags to rebuild with, when this CPU cannot run that build), and shows the memory plan
every command uses by default (memory_plan.py: the KV-cache type, context and weight loading that fit
the model on this board, estimated from its GGUF metadata and the build alone; no weights are loaded).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass

from .board import Cores, Memory, build_features, build_mismatch, cpu_features, read_cores, rebuild_advice
from .errors import EdgeQwenError
from .gguf_info import inspect_gguf
from .memory_plan import CTX_CHOICES, MemoryPlan, MiB, board_memory, estimate_bytes, kv_bytes_per_token, plan_memory
from .model_paths import resolve_model
from .weight_memory import weight_memory


@dataclass
class ModelEstimate:
    path: str
    architecture: str
    file_type: str | None
    file_bytes: int
    kv_bytes_per_token: int | None  # f16
    context_length: int | None
    estimate_bytes: dict[str, dict[int, int]]  # KV type -> n_ctx -> estimated peak memory


@dataclass
class Report:
    machine: str
    memory: Memory
    cores: Cores
    cpu_features: dict[str, bool]
    llama_cpp_features: str
    build_error: str | None  # this CPU cannot run the llama.cpp build: why, and the flags to rebuild with
    model: ModelEstimate | None
    model_error: str | None
    plan: MemoryPlan | None  # what every command uses unless --ctx / --kv-cache say otherwise
    recommended_ctx: int | None
    recommended_kv_cache: str | None
    recommended_threads: int
    warnings: list[str]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["memory"]["usable"] = self.memory.usable
        if self.plan is not None:
            data["plan"]["fits"] = self.plan.fits
        return data


# --------------------------------------------------------------------------- the model


def probe_build(timeout: float = 120.0) -> tuple[str, str | None]:
    """The installed llama.cpp's feature line, read by a child process, and why it could not be read (None: it was).

    doctor itself never imports llama.cpp: a library built for features this CPU lacks dies with SIGILL,
    and it should be the child that dies, with doctor left to say which flags to rebuild with."""
    command = [sys.executable, "-m", "edgeqwen.engine.llama_build"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "", f"loading llama.cpp took over {timeout:.0f} s"
    if done.returncode == 0:
        return done.stdout.strip(), None
    if done.returncode == -4:  # SIGILL
        return "", f"the installed llama.cpp dies with an illegal instruction on this CPU; {rebuild_advice()}"
    last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return "", f"llama.cpp cannot be loaded: {last}"


def diagnose(model: str | os.PathLike | None = None, *, ram_bytes: int | None = None, n_ctx: int | None = None,
             kv_cache: str | None = None) -> Report:
    """Everything `edgeqwen doctor` prints. ram_bytes: plan for a board with this much RAM instead of this one."""
    memory = Memory(total=ram_bytes, available=ram_bytes,
                    cgroup_limit=None) if ram_bytes is not None else board_memory()
    cores = read_cores()
    build, crash = probe_build()
    warnings: list[str] = []
    estimate = plan = None
    model_error = None
    try:
        info = inspect_gguf(resolve_model(model))
    except EdgeQwenError as error:
        model_error = str(error)
        warnings.append(f"no usable model: {error}")
    else:
        contexts = sorted({*CTX_CHOICES, *([n_ctx] if n_ctx else [])})
        plan = plan_memory(info, memory, n_ctx=n_ctx, kv_type=kv_cache, build=build_features(build))
        weights = weight_memory(info, build_features(build), repack=plan.loading.repack, mmap=plan.loading.mmap)
        estimate = ModelEstimate(
            path=str(info.path), architecture=info.architecture, file_type=info.file_type, file_bytes=info.file_size,
            kv_bytes_per_token=kv_bytes_per_token(info), context_length=info.context_length,
            estimate_bytes={kv: {c: estimate_bytes(info, c, kv, weights) for c in contexts} for kv in ("f16", "q8_0")},
        )
        if not plan.fits:
            usable = memory.usable
            warnings.append(
                f"the model will not fit: about {plan.estimate_bytes / MiB:.0f} MiB needed at --ctx {plan.n_ctx} "
                f"--kv-cache {plan.kv_type}, {plan.budget_bytes / MiB:.0f} MiB to plan with"
                + (f" ({usable / MiB:.0f} MiB available)" if usable else "")
                + "; use a smaller model or free memory (swap makes it very slow)"
            )
        if not info.has_chat_template:
            warnings.append("the model has no chat template: edgeqwen needs an instruct/chat model")
    features = cpu_features()
    if features.get("avx2") is False and "avx2" in features:
        warnings.append("this x86 CPU lacks AVX2: expect slow inference")
    if "NEON (asimd)" in features and not features.get("dotprod (asimddp)"):
        warnings.append("no ARM dotprod: use the armv8-a build (docs/raspberry-pi.md, step 3); nothing is repacked, "
                        "expect slower inference")
    return Report(
        machine=platform.machine(),
        memory=memory,
        cores=cores,
        cpu_features=features,
        llama_cpp_features=build,
        build_error=crash or build_mismatch(build),
        model=estimate,
        model_error=model_error,
        plan=plan,
        recommended_ctx=plan.n_ctx if plan and plan.fits else None,
        recommended_kv_cache=plan.kv_type if plan and plan.fits else None,
        recommended_threads=cores.physical,
        warnings=warnings,
    )


def format_report(report: Report) -> list[str]:
    """The report as lines for people."""

    def mib(value: int | None) -> str:
        return "unknown" if value is None else f"{value / MiB:,.0f} MiB"

    m, c = report.memory, report.cores
    lines = [
        f"machine        {report.machine}",
        f"RAM            {mib(m.total)} total, {mib(m.available)} available"
        + (f", cgroup limit {mib(m.cgroup_limit)}" if m.cgroup_limit else ""),
        f"cores          {c.logical} logical, {c.usable} usable, {c.physical} physical"
        + (f" big cores (big.LITTLE, capacities {sorted(set(c.capacities))})" if c.big_little else ""),
        "CPU features   " + " ".join(f"{name}={'yes' if ok else 'no'}" for name, ok in report.cpu_features.items()),
        f"llama.cpp      {report.llama_cpp_features}",
    ]
    if report.model is not None:
        e = report.model
        per_token = "unknown" if e.kv_bytes_per_token is None else f"{e.kv_bytes_per_token / 1024:.0f} KiB/token"
        lines += [
            f"model          {e.path} ({e.architecture}, {e.file_type}, {mib(e.file_bytes)})",
            f"KV cache       {per_token} (f16; about half with --kv-cache q8_0), n_ctx cells allocated",
            *(f"estimate {kv:5} " + ", ".join(f"--ctx {n}: {mib(b)}" for n, b in by_ctx.items())
              for kv, by_ctx in e.estimate_bytes.items()),
        ]
    if report.plan is not None:
        lines.append(f"default plan   {report.plan.describe()}")
    if report.recommended_ctx or report.model is None:
        ctx = (f"--ctx {report.recommended_ctx} --kv-cache {report.recommended_kv_cache} " if report.recommended_ctx
               else "")
        lines.append(f"recommended    {ctx}--threads {report.recommended_threads}")
    else:
        lines.append(f"recommended    --threads {report.recommended_threads} (no --ctx fits the available RAM)")
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"error: {report.build_error}"] if report.build_error else []
    return lines
