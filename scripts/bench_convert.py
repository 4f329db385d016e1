#!/usr/bin/env python3
"""Full-size benchmark of `edgeqwen quantize` (not a CI test).

Two checkpoints in the hub's layout, both stored in bf16 with lm_head saved as a copy of the tied
embedding (as Qwen1.5-0.5B-Chat is published):
- qwen1.5-shape: random weights with Qwen1.5-0.5B's exact shape (hidden 1024, 24 layers, 16 heads,
  16 KV heads, ffn 2816, vocab 151936, tied);
- standin: the stand-in model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) dequantized back to a checkpoint.
Each is run through the whole pipeline for Q4_K_M and Q8_0, each run in a fresh process so that its
per-stage peak RSS is its own. For qwen1.5-shape, a Q4_K_M with the duplicate output tensor kept
gives the size llama.cpp's own converter would produce.

    .venv/bin/python scripts/bench_convert.py [--work DIR] [--only qwen1.5-shape|standin] [--threads N]

Prints a table and writes bench_convert.json into --work (default: models/.bench-convert).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
STANDIN = REPO_ROOT / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
TYPES = ("Q4_K_M", "Q8_0")

# GGUF tensor name -> HF name (the inverse of gguf-py's map for qwen2)
_GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
}


def build_qwen15_shape(dest: Path, tokenizer_dir: Path) -> Path:
    from convert_fixtures import make_checkpoint

    if not (dest / "config.json").is_file():
        make_checkpoint(dest, tokenizer_dir, hidden=1024, layers=24, heads=16, kv_heads=16, ffn=2816,
                        vocab=151936, tied=True, lm_head="equal", dtype="BF16", seed=15,
                        init_std=0.02)  # Qwen's initializer_range: deeper scaled-up random nets are chaotic
    return dest


def build_standin(dest: Path, tokenizer_dir: Path) -> Path:
    """Dequantize the stand-in GGUF into a bf16 checkpoint, tensor by tensor."""
    if (dest / "config.json").is_file():
        return dest
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from edgeqwen.convert.safetensors_io import write_safetensors

    from convert_fixtures import TOKENIZER_FILES, qwen2_config

    reader = GGUFReader(STANDIN)
    meta = {k: reader.get_field(k).contents() for k in reader.fields if k.startswith("qwen2.")}
    config = qwen2_config(hidden=meta["qwen2.embedding_length"], layers=meta["qwen2.block_count"],
                          heads=meta["qwen2.attention.head_count"], kv_heads=meta["qwen2.attention.head_count_kv"],
                          ffn=meta["qwen2.feed_forward_length"], vocab=151936, tied=True)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, dest / name)
    by_name = {t.name: t for t in reader.tensors}

    def loader(tensor):
        def load():
            values = dequantize(tensor.data, tensor.tensor_type)
            return np.asarray(values, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
        return load

    sources = {}
    for gguf_name, tensor in by_name.items():
        if gguf_name == "output.weight":
            continue  # tied: lm_head is stored as a copy of the embedding below
        if gguf_name.startswith("blk."):
            _, layer, rest = gguf_name.split(".", 2)
            hf = f"model.layers.{layer}.{_GGUF_TO_HF[rest]}"
        else:
            hf = _GGUF_TO_HF[gguf_name]
        shape = tuple(int(d) for d in reversed(tensor.shape))
        sources[hf] = ("BF16", shape, loader(tensor))
    embed = by_name["token_embd.weight"]
    sources["lm_head.weight"] = ("BF16", tuple(int(d) for d in reversed(embed.shape)), loader(embed))
    write_safetensors(dest / "model.safetensors", sources)
    return dest


def _run_one(queue, kwargs) -> None:
    try:
        from edgeqwen.convert import QuantizeOptions, run_quantize

        started = time.perf_counter()
        result = run_quantize(QuantizeOptions(**kwargs), log=lambda m: print(m, flush=True))
        queue.put({"ok": True, "seconds": round(time.perf_counter() - started, 1), "manifest": result.manifest})
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        queue.put({"ok": False, "error": f"{type(error).__name__}: {error}"})


def run_isolated(**kwargs) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_one, args=(queue, kwargs))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def duplicate_kept_size(checkpoint: Path, work: Path, qtype: str, threads: int | None) -> int:
    """Size of the qtype file when the duplicate output tensor is written (as llama.cpp's converter does)."""
    from edgeqwen.convert.hf_to_gguf import convert_checkpoint
    from edgeqwen.convert.quantize import quantize_gguf

    unq = work / "dup-unquantized.gguf"
    out = work / "dup.gguf"
    convert_checkpoint(checkpoint, unq, keep_tied_duplicate=True)
    quantize_gguf(unq, out, qtype, threads=threads)
    size = out.stat().st_size
    unq.unlink()
    out.unlink()
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "models" / ".bench-convert")
    parser.add_argument("--only", choices=("qwen1.5-shape", "standin"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)

    from convert_fixtures import make_hub_cache, write_tokenizer_from_gguf

    tokenizer_dir = work / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        write_tokenizer_from_gguf(STANDIN, tokenizer_dir)
    builders = {"qwen1.5-shape": build_qwen15_shape, "standin": build_standin}
    rows = []
    report: dict = {"runs": [], "duplicate_kept": {}}
    for name, build in builders.items():
        if args.only and name != args.only:
            continue
        started = time.perf_counter()
        checkpoint = build(work / f"ckpt-{name}", tokenizer_dir)
        build_s = time.perf_counter() - started
        cache = work / f"hub-cache-{name}"
        if not cache.exists():
            make_hub_cache(cache, f"bench/{name}", checkpoint, commit="b" * 40)
        print(f"== {name}: checkpoint ready ({build_s:.0f} s)", flush=True)
        for qtype in TYPES:
            out = work / "out" / f"{name}-{qtype.lower()}.gguf"
            run = run_isolated(repo=f"bench/{name}", local_dir=cache, qtype=qtype, output=out,
                               threads=args.threads, progress=False, verify_strict=False)
            run.update(model=name, type=qtype)
            report["runs"].append(run)
            if not run["ok"]:
                print(f"!! {name} {qtype}: {run['error']}", flush=True)
                continue
            m = run["manifest"]
            stages = {s["name"]: s for s in m["stages"]}
            v = m["verification"]
            rows.append([name, qtype] + [f"{stages[s]['seconds']:.0f}s/{stages[s]['peak_rss_mb']:.0f}MB"
                                         for s in ("fetch", "convert", "quantize", "verify")]
                        + [f"{m['conversion']['unquantized_size_bytes'] / 1e6:.0f}", f"{m['size_bytes'] / 1e6:.1f}",
                           f"{m['conversion']['bytes_saved_unquantized'] / 1e6:.1f}",
                           f"{v['top1_agreement']:.1%}", f"{v['mean_kl']:.4f}", f"{v['max_kl']:.3f}",
                           "yes" if v["passed"] else f"NO (limit {v['kl_limit']})"])
        if name == "qwen1.5-shape":
            report["duplicate_kept"]["Q4_K_M"] = duplicate_kept_size(checkpoint, work, "Q4_K_M", args.threads)
    header = ["model", "type", "fetch", "convert", "quantize", "verify", "unq MB", "out MB", "saved MB",
              "top-1", "mean KL", "max KL", "pass"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    print("\n(time / peak RSS per stage; unq = unquantized GGUF; saved = duplicate lm_head not written, unquantized "
          "bytes)")
    print("\n".join(lines))
    for qtype, size in report["duplicate_kept"].items():
        print(f"qwen1.5-shape {qtype} with the duplicate output tensor kept (llama.cpp converter layout): "
              f"{size / 1e6:.1f} MB")
    report["table"] = lines
    (work / "bench_convert.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {work / 'bench_convert.json'}")
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
