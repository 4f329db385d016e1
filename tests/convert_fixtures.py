"""Helpers for the converter tests and benchmark: tiny random Qwen2 checkpoints in the hub's layouts.

The tokenizer files are rebuilt from the stand-in GGUF's tokenizer fields (the Qwen2 byte-level BPE
vocabulary, merges, added tokens and chat template), written as Hugging Face tokenizer.json,
vocab.json, merges.txt and tokenizer_config.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from edgeqwen.convert.safetensors_io import write_safetensors

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
CONTROL, USER_DEFINED, NORMAL = 3, 4, 1


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def read_gguf_metadata(path: Path) -> dict:
    """All metadata key/values of a GGUF file (v3, little-endian). A plain struct walk: gguf's reader
    builds one numpy view per array item and takes ~10 s on a 150k-token vocabulary."""
    import struct

    with open(path, "rb") as f:
        head = f.read(24)
        assert head[:4] == b"GGUF", path
        n_kv = struct.unpack_from("<Q", head, 16)[0]
        data = f.read(64 << 20)  # metadata of a Qwen model is ~10 MB
    pos = 0

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 8 + n
        return data[pos - n:pos].decode("utf-8")

    def value(vtype: int):
        nonlocal pos
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            if itype in _SCALARS:
                fmt = _SCALARS[itype]
                size = struct.calcsize(fmt)
                items = list(struct.unpack_from("<" + fmt[1] * count, data, pos))
                pos += size * count
                return items
            return [value(itype) for _ in range(count)]
        fmt = _SCALARS[vtype]
        (item,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return item

    metadata = {}
    for _ in range(n_kv):
        key = string()
        (vtype,) = struct.unpack_from("<I", data, pos)
        pos += 4
        metadata[key] = value(vtype)
    return metadata


def write_tokenizer_from_gguf(gguf_path: Path, dest: Path) -> dict:
    """Write HF tokenizer files for the tokenizer stored in gguf_path; returns the GGUF fields read."""
    metadata = read_gguf_metadata(gguf_path)
    value = metadata.get

    tokens, types, merges = (value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type"),
                             value("tokenizer.ggml.merges"))
    template = value("tokenizer.chat_template")
    eos, pad, bos = (value(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "padding", "bos"))
    vocab = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == NORMAL}
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": ty == CONTROL}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            byte_level]},
        "post_processor": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {**vocab, **{a["content"]: a["id"] for a in added}}, "merges": list(merges)},
    }
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "add_prefix_space": False, "bos_token": None, "chat_template": template,
        "clean_up_tokenization_spaces": False, "eos_token": tokens[eos], "errors": "replace",
        "model_max_length": 32768, "pad_token": tokens[pad], "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    return {"tokens": tokens, "token_type": types, "merges": merges, "eos": eos, "pad": pad, "bos": bos,
            "chat_template": template, "n_vocab": len(tokens)}


def qwen2_config(*, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int, tied: bool,
                 dtype: str = "bfloat16", bos: int = 151643, eos: int = 151645) -> dict:
    """config.json as Qwen1.5/Qwen2 publish it."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
        "bos_token_id": bos, "eos_token_id": eos, "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": ffn, "max_position_embeddings": 32768,
        "max_window_layers": layers, "num_attention_heads": heads, "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": tied, "torch_dtype": dtype,
        "use_cache": True, "use_sliding_window": False, "vocab_size": vocab,
    }


def tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor names and shapes of a Qwen2 checkpoint (without lm_head)."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.q_proj.bias": (h,),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
        })
    shapes["model.norm.weight"] = (h,)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], seed: int, init_std: float | None = None) -> np.ndarray:
    """Deterministic random weights. By default scaled so that logits get a useful spread (tests);
    init_std gives every matrix that standard deviation instead, like a freshly initialised model."""
    rng = np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])
    if name.endswith("norm.weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if name.endswith(".bias"):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    if init_std is not None:
        return (init_std * rng.standard_normal(shape)).astype(np.float32)
    std = 0.5 if "embed" in name or "lm_head" in name else 1.0 / np.sqrt(shape[-1])
    return (std * rng.standard_normal(shape)).astype(np.float32)


def make_checkpoint(dest: Path, tokenizer_dir: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                    kv_heads: int = 2, ffn: int = 128, vocab: int = 151936, tied: bool = True,
                    lm_head: str = "equal", dtype: str = "F32", shards: int = 1, seed: int = 0,
                    init_std: float | None = None) -> Path:
    """A random Qwen2 checkpoint in hub layout. lm_head: 'equal' (a copy of the embedding), 'none', 'random'."""
    dest.mkdir(parents=True, exist_ok=True)
    config = qwen2_config(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, ffn=ffn, vocab=vocab,
                          tied=tied, dtype={"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[dtype])
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    (dest / "generation_config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643]}))
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, dest / name)
    shapes = tensor_shapes(config)
    if lm_head == "equal":
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    elif lm_head == "random":
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    sources = {}
    for name, shape in shapes.items():
        source_name = "model.embed_tokens.weight" if (name == "lm_head.weight" and lm_head == "equal") else name
        sources[name] = (dtype, shape, lambda n=source_name, s=shape: random_tensor(n, s, seed, init_std))
    names = list(sources)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    if shards == 1:
        write_safetensors(dest / "model.safetensors", sources)
    else:
        weight_map = {}
        for k, group in enumerate(groups, 1):
            file = f"model-{k:05d}-of-{shards:05d}.safetensors"
            write_safetensors(dest / file, {n: sources[n] for n in group})
            weight_map.update({n: file for n in group})
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return dest


def make_hub_cache(cache: Path, repo: str, files_dir: Path, commit: str = "a" * 40, ref: str = "main") -> Path:
    """Lay files_dir out as huggingface_hub's cache: blobs/<sha256>, snapshots/<commit>/* -> blobs, refs/<ref>."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    for file in sorted(files_dir.iterdir()):
        if not file.is_file():
            continue
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        blob = root / "blobs" / digest
        if not blob.exists():
            shutil.copyfile(file, blob)
        link = snapshot / file.name
        link.unlink(missing_ok=True)
        os.symlink(os.path.relpath(blob, snapshot), link)
    return root
