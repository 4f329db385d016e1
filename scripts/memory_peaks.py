#!/usr/bin/env python3
"""Peak memory of both roles and a chat reply, per model and setting, against the memory plan's estimate.

Each combination runs in a fresh process: load the model with the plan for EDGEQWEN_MEMORY (and
EDGEQWEN_REPACK / EDGEQWEN_MMAP when given), label a few texts through `--task auto` (route and
sentiment), answer one chat message with a short greedy reply, then read the process's peak RSS
(VmHWM) and the llama.cpp log's repacked tensors. Not a test: a maintainer's measurement (x86 under
`flock /tmp/edgeqwen-model.lock`, aarch64 inside `make arm64-check`'s root, under `nice -n 19`).

    python scripts/memory_peaks.py --model M.gguf [--model N.gguf] [--memory 1G 2G] [--repack plan on off]
        [--mmap plan on off] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TEXTS = ("这家餐厅的服务太差了，我再也不会来了。", "The battery life is amazing and the screen is gorgeous.",
         "你好！请用两句话介绍一下长城。")
CHAT = "Say hello in five words."
REPACK_LINE = re.compile(r"repack tensor (\S+) with (\S+)")


def rss_kib() -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(status[key].split()[0]) for key in ("VmHWM", "VmRSS", "RssAnon", "RssFile")}


def measure_one(model: str, chat_tokens: int, texts: int) -> dict:
    """In this process: load, label, chat, and report the plan and the peak."""
    import llama_cpp  # noqa: F401  (the base: Python, numpy, llama.cpp's library and edgeqwen, no model)

    from edgeqwen import EdgeQwen

    base = rss_kib()["VmRSS"]
    started = time.perf_counter()
    eq = EdgeQwen(model, verbose=True)  # verbose: llama.cpp logs each tensor it repacks
    loaded = time.perf_counter()
    results = [eq.run(text, "auto", chat=False) for text in TEXTS[:texts]]
    reply = eq.conversation(sampling={"temperature": 0, "max_tokens": chat_tokens}).reply(CHAT)
    kib = rss_kib()
    plan = eq.memory_plan
    return {
        "plan": plan.describe(), "estimate_mib": round(plan.estimate_bytes / 2**20, 1),
        "repack": plan.loading.repack, "mmap": plan.loading.mmap, "n_ctx": plan.n_ctx, "kv_cache": plan.kv_type,
        "peak_rss_mib": round(kib["VmHWM"] / 1024, 1), "rss_anon_mib": round(kib["RssAnon"] / 1024, 1),
        "rss_file_mib": round(kib["RssFile"] / 1024, 1), "base_rss_mib": round(base / 1024, 1),
        "routes": [r.route.task if r.route else None for r in results],
        "labels": [r.sentiment.label if r.sentiment else None for r in results], "reply": reply,
        "load_s": round(loaded - started, 1), "run_s": round(time.perf_counter() - loaded, 1),
    }


def run_child(model: str, env: dict[str, str], chat_tokens: int, texts: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", model, "--chat-tokens", str(chat_tokens),
                           "--texts", str(texts)],
                          capture_output=True, text=True, env={**os.environ, **env})
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    repacked = REPACK_LINE.findall(done.stderr)
    figures["repacked_tensors"] = len(repacked)
    figures["repacked_layouts"] = sorted({layout for _, layout in repacked})
    figures["repacked_names"] = sorted({re.sub(r"^blk\.\d+\.", "blk.N.", name) for name, _ in repacked})
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[])
    parser.add_argument("--memory", nargs="+", default=["1G", "2G"])
    parser.add_argument("--repack", nargs="+", default=["plan"], choices=("plan", "on", "off"))
    parser.add_argument("--mmap", nargs="+", default=["plan"], choices=("plan", "on", "off"))
    parser.add_argument("--chat-tokens", type=int, default=8)
    parser.add_argument("--texts", type=int, default=len(TEXTS), help="how many of the texts to label (1: the first)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child, args.chat_tokens, args.texts), ensure_ascii=False))
        return 0
    rows = []
    for model, memory, repack, mmap in itertools.product(args.model, args.memory, args.repack, args.mmap):
        env = {"EDGEQWEN_MEMORY": memory}
        env.update({"EDGEQWEN_REPACK": repack} if repack != "plan" else {})
        env.update({"EDGEQWEN_MMAP": mmap} if mmap != "plan" else {})
        started = time.perf_counter()
        figures = run_child(model, env, args.chat_tokens, args.texts)
        row = {"model": Path(model).name, "memory": memory, "repack_setting": repack, "mmap_setting": mmap,
               "wall_s": round(time.perf_counter() - started, 1), **figures}
        if "peak_rss_mib" in row:
            row["estimate_over_peak"] = round(row["estimate_mib"] / row["peak_rss_mib"], 3)
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
