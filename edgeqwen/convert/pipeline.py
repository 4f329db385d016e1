"""`edgeqwen quantize`: fetch -> convert -> quantize -> verify -> manifest, each stage timed.

The unquantized GGUF lives in a work folder beside the output and is removed at the end (unless
kept). The quantized file is written under a hidden temporary name and renamed only after it has
been verified, so models/ never holds a half-written or unverified model under its final name.
"""

from __future__ import annotations

import gc
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from edgeqwen.errors import ConvertError
from edgeqwen.gguf_info import inspect_gguf
from edgeqwen.hashing import sha256_file, write_stamp
from edgeqwen.model_paths import default_models_dir

from .fetch import DEFAULT_REPO, fetch_checkpoint
from .hf_to_gguf import convert_checkpoint
from .manifest import write_manifest
from .quantize import DEFAULT_QUANT, normalize_type, quantize_gguf
from .verify import PROMPTS, verify_quantized

Log = Callable[[str], None]


@dataclass
class QuantizeOptions:
    repo: str = DEFAULT_REPO
    revision: str | None = None
    local_dir: Path | None = None
    qtype: str = DEFAULT_QUANT
    output: Path | None = None
    threads: int | None = None
    intermediate: str = "auto"  # unquantized GGUF precision: auto (= the checkpoint's), f32, f16, bf16
    keep_unquantized: bool = False
    keep_tied_duplicate: bool = False  # write lm_head even when it duplicates the embedding (comparison)
    verify: bool = True
    verify_prompts: tuple[str, ...] = PROMPTS
    verify_strict: bool = True  # fail (and keep nothing) when the mean KL is over the type's limit
    progress: bool = True
    cache_dir: Path | None = None
    endpoint: str | None = None


@dataclass
class Stage:
    name: str
    seconds: float
    peak_rss_mb: float | None


@dataclass
class QuantizeResult:
    output: Path
    manifest_path: Path
    manifest: dict[str, Any]
    stages: list[Stage] = field(default_factory=list)
    unquantized: Path | None = None


def default_output_name(repo: str, qtype: str) -> str:
    """models/<repo name>-<type>.gguf, lower case: qwen1.5-0.5b-chat-q4_k_m.gguf."""
    base = re.sub(r"[^a-z0-9._-]+", "-", repo.rstrip("/").split("/")[-1].lower()).strip("-") or "model"
    return f"{base}-{qtype.lower()}.gguf"


# --------------------------------------------------------------------------- peak memory per stage


def _read_status(key: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) / 1024 if found else None


def _reset_peak_rss() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@contextmanager
def stage(name: str, stages: list[Stage], log: Log) -> Iterator[None]:
    gc.collect()  # what the previous stage left behind should not count here
    exact = _reset_peak_rss()
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    peak = _read_status("VmHWM") if exact else None
    stages.append(Stage(name, round(seconds, 2), round(peak, 1) if peak is not None else None))
    rss = f", peak RSS {peak:.0f} MB" if peak is not None else ""
    log(f"  {name}: {seconds:.1f} s{rss}")


# --------------------------------------------------------------------------- pipeline


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("edgeqwen", "gguf", "llama_cpp_python", "huggingface_hub", "numpy"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def _input_hashes(folder: Path) -> dict[str, str]:
    names = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
             "model.safetensors.index.json")
    files = [folder / n for n in names if (folder / n).is_file()] + sorted(folder.glob("*.safetensors"))
    return {f.name: sha256_file(f) for f in files}


def planned_output(options: QuantizeOptions) -> Path:
    """Where run_quantize writes the model: --output, else models/<repo name>-<type>.gguf."""
    qtype = normalize_type(options.qtype)
    return Path(options.output) if options.output else default_models_dir() / default_output_name(options.repo, qtype)


def run_quantize(options: QuantizeOptions, log: Log = print) -> QuantizeResult:
    qtype = normalize_type(options.qtype)
    output = planned_output(options)
    if output.suffix != ".gguf":
        raise ConvertError(f"output {output} must end in .gguf")
    output.parent.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []

    log(f"[1/5] fetching {options.repo}" + (f" from {options.local_dir}" if options.local_dir
                                            else " from the Hugging Face Hub"))
    with stage("fetch", stages, log):
        fetched = fetch_checkpoint(options.repo, options.revision, local_dir=options.local_dir,
                                   cache_dir=options.cache_dir, endpoint=options.endpoint, progress=options.progress)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=output.parent) as work_name:
        work = Path(work_name)
        unquantized = work / "unquantized.gguf"
        log(f"[2/5] converting {fetched.path} to GGUF (no torch)")
        with stage("convert", stages, log):
            converted = convert_checkpoint(fetched.path, unquantized, outtype=options.intermediate,
                                           name=fetched.repo.split("/")[-1], progress=options.progress,
                                           keep_tied_duplicate=options.keep_tied_duplicate, log=log)
            inspect_gguf(unquantized)
        log(f"      {converted.outtype.upper()} GGUF: {converted.file_size / 1e6:.1f} MB, output tensor "
            f"{converted.output_tensor}")

        partial = output.with_name(f".{output.name}.part")  # hidden and not *.gguf: never picked as a model
        try:
            log(f"[3/5] quantizing to {qtype} with llama.cpp")
            with stage("quantize", stages, log):
                quantize_gguf(unquantized, partial, qtype, threads=options.threads)
                info = inspect_gguf(partial)
            verification = None
            if options.verify:
                log("[4/5] verifying against the unquantized GGUF (next-token distributions, zh + en prompts)")
                with stage("verify", stages, log):
                    verification = verify_quantized(unquantized, partial, qtype, threads=options.threads,
                                                    prompts=options.verify_prompts, strict=options.verify_strict)
                log(f"      top-1 agreement {verification.top1_agreement:.1%}, mean KL {verification.mean_kl:.4f} "
                    f"(limit {verification.kl_limit}) over {verification.positions} positions")
            log("[5/5] hashing and writing the manifest")
            with stage("manifest", stages, log):
                manifest = {
                    "model": output.name,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "source": {"repo": fetched.repo, "revision": fetched.revision or "main", "commit": fetched.commit,
                               "origin": fetched.origin, "files_sha256": _input_hashes(fetched.path)},
                    "quantization": qtype,
                    "size_bytes": partial.stat().st_size,
                    "sha256": sha256_file(partial),
                    "n_params": info.n_params,
                    "conversion": {
                        "unquantized_type": converted.outtype.upper(),
                        "unquantized_size_bytes": converted.file_size,
                        "unquantized_sha256": sha256_file(unquantized),
                        "source_dtypes": converted.source_dtypes,
                        "tied_embeddings": converted.tied_embeddings,
                        "output_tensor": converted.output_tensor,
                        "bytes_saved_unquantized": converted.bytes_saved,
                        "warnings": converted.warnings,
                    },
                    "verification": verification.as_dict() if verification else "skipped (--no-verify)",
                    "versions": _versions(),
                }
            partial.replace(output)
            write_stamp(output, manifest["sha256"])  # heads trained for this file record it (head.model_identity)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        manifest["stages"] = [vars(s) for s in stages]
        manifest_file = write_manifest(output, manifest)
        kept = None
        if options.keep_unquantized:
            kept = output.with_name(output.name.removesuffix(".gguf").removesuffix(f"-{qtype.lower()}")
                                    + f"-{converted.outtype}.gguf")
            shutil.move(str(unquantized), kept)
    log(f"wrote {output} ({manifest['size_bytes'] / 1e6:.1f} MB) and {manifest_file.name}")
    return QuantizeResult(output, manifest_file, manifest, stages, kept)


def main_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
