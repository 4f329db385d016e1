"""Convert a Qwen2-architecture checkpoint (Qwen1.5, Qwen2, Qwen2.5) to GGUF with gguf-py, no torch.

Hyperparameters come from config.json, the byte-level BPE tokenizer from tokenizer.json (or
vocab.json + merges.txt), special ids and the chat template via gguf-py's SpecialVocab, tensor names
from gguf-py's tensor-name map. gguf-py's GGUFWriter writes the header, metadata and tensor table;
the tensor data is then streamed a block of rows at a time from the safetensors files, so peak memory
stays at a few blocks whatever the model size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, LlamaFileType, TokenType

from edgeqwen.errors import ConvertError

from .safetensors_io import TensorEntry, float32_to_bf16_bits, open_checkpoint, read_chunks, to_float32

ARCHITECTURES = ("Qwen2ForCausalLM",)  # Qwen1.5, Qwen2 and Qwen2.5 all use it
GGUF_ARCH = "qwen2"
OUTTYPES = {  # name -> (GGML type of 2-D weights, general.file_type, numpy storage dtype)
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32, np.dtype("<f4")),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16, np.dtype("<f2")),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16, np.dtype("<u2")),
}
# Files the conversion reads; fetch.py downloads only these.
NEEDED_FILES = (
    "config.json", "generation_config.json", "model.safetensors.index.json", "*.safetensors",
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "chat_template.jinja", "chat_template.json",
)
IGNORED_TENSOR_SUFFIXES = (".rotary_emb.inv_freq",)  # recomputed by llama.cpp
Log = Callable[[str], None]


@dataclass
class ConvertResult:
    path: Path
    outtype: str
    source_dtypes: list[str]
    n_tensors: int
    n_params: int
    file_size: int
    tied_embeddings: bool
    output_tensor: str  # "written", "dropped (duplicate of the embedding)", "absent from checkpoint", ...
    bytes_saved: int  # bytes the duplicate output tensor would have taken in this file
    vocab_size: int
    n_merges: int
    special_token_ids: dict[str, int]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# --------------------------------------------------------------------------- config


def load_config(directory: Path) -> dict[str, Any]:
    """config.json, checked to be a Qwen2-architecture causal LM this converter supports."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConvertError(f"no config.json in {directory} (not a Hugging Face model folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"config.json is not valid JSON ({' '.join(str(e).split())[:100]}): {path}") from e
    archs = config.get("architectures") or []
    if not any(a in ARCHITECTURES for a in archs):
        found = ", ".join(map(str, archs)) or f"model_type {config.get('model_type')!r}"
        raise ConvertError(
            f"unsupported architecture {found} in {path}; edgeqwen converts {', '.join(ARCHITECTURES)} "
            "(Qwen1.5, Qwen2, Qwen2.5)"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise ConvertError(f"config.json lacks a positive integer {key}: {path}")
    heads = config["num_attention_heads"]
    if config["hidden_size"] % heads:
        raise ConvertError(f"hidden_size {config['hidden_size']} is not a multiple of num_attention_heads {heads}: "
                           f"{path}")
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != config["hidden_size"] // heads:
        raise ConvertError(f"head_dim {head_dim} != hidden_size / heads is not supported yet: {path}")
    if config.get("use_sliding_window"):
        raise ConvertError(f"sliding-window attention (use_sliding_window: true) is not supported: {path}")
    return config


def rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


# --------------------------------------------------------------------------- tokenizer


@dataclass
class Tokenizer:
    tokens: list[str]
    token_types: list[int]
    special: gguf.SpecialVocab


def load_tokenizer(directory: Path, vocab_size: int) -> Tokenizer:
    """Tokens, token types, merges, special ids and chat template, as llama.cpp's converter sets them."""
    directory = Path(directory)
    vocab, added = _read_vocab(directory)
    if not vocab:
        raise ConvertError(f"the tokenizer in {directory} has an empty vocabulary")
    ids = list(vocab.values()) + [a["id"] for a in added]
    if max(ids) >= vocab_size:
        raise ConvertError(f"token id {max(ids)} does not fit vocab_size {vocab_size} of config.json: {directory}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(TokenType.NORMAL)
    for a in added:
        text = a["content"]
        tokens[a["id"]] = text
        special = bool(a.get("special")) or _looks_special(text)
        types[a["id"]] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    special_vocab = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
    _fill_special_ids(special_vocab, directory, tokens)
    if not special_vocab.merges:
        raise ConvertError(f"the tokenizer in {directory} has no BPE merges (tokenizer.json or merges.txt)")
    if not special_vocab.chat_template:
        raise ConvertError(f"no chat template in {directory}/tokenizer_config.json (use an instruct/chat model)")
    return Tokenizer(tokens, types, special_vocab)


def _read_vocab(directory: Path) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(normal vocabulary, added tokens) from tokenizer.json, else vocab.json + tokenizer_config.json."""
    tok_json = directory / "tokenizer.json"
    if tok_json.is_file():
        try:
            data = json.loads(tok_json.read_text(encoding="utf-8"))
            model = data["model"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConvertError(f"tokenizer.json is not a valid tokenizer file: {tok_json}") from e
        if model.get("type") != "BPE":
            raise ConvertError(f"tokenizer model is {model.get('type')!r}, expected byte-level BPE: {tok_json}")
        added = [a for a in data.get("added_tokens", []) if isinstance(a, dict)]
        added_ids = {a["id"] for a in added}
        return {t: i for t, i in model["vocab"].items() if i not in added_ids}, added
    vocab_json = directory / "vocab.json"
    if vocab_json.is_file() and (directory / "merges.txt").is_file():
        try:
            vocab = json.loads(vocab_json.read_text(encoding="utf-8"))
            config = _read_json(directory / "tokenizer_config.json")
        except (OSError, ValueError) as e:
            raise ConvertError(f"vocab.json or tokenizer_config.json is not valid JSON: {directory}") from e
        decoder = config.get("added_tokens_decoder") or {}
        added = [{"id": int(i), **spec} for i, spec in decoder.items()]
        added_ids = {a["id"] for a in added}
        return {t: i for t, i in vocab.items() if i not in added_ids}, added
    raise ConvertError(
        f"missing tokenizer in {directory}: need tokenizer.json, or vocab.json + merges.txt "
        "(fetch the whole repo, not just the weights)"
    )


def _fill_special_ids(special: gguf.SpecialVocab, directory: Path, tokens: list[str]) -> None:
    """SpecialVocab finds `<typ>_token` strings only among tokenizer.json's added tokens; without
    tokenizer.json, look them up in the token list instead."""
    try:
        config = _read_json(directory / "tokenizer_config.json")
    except (OSError, ValueError):
        return
    ids = {text: i for i, text in enumerate(tokens)}
    for typ in special.special_token_types:
        entry = config.get(f"{typ}_token")
        content = entry.get("content") if isinstance(entry, dict) else entry
        if typ not in special.special_token_ids and isinstance(content, str) and content in ids:
            special.special_token_ids[typ] = ids[content]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _looks_special(text: str) -> bool:
    """Added tokens that llama.cpp's converter treats as control tokens although not marked special."""
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


# --------------------------------------------------------------------------- tensors


@dataclass
class _Planned:
    entry: TensorEntry
    gguf_name: str
    ggml_type: GGMLQuantizationType
    storage: np.dtype
    nbytes: int


def _plan_tensors(entries: dict[str, TensorEntry], config: dict[str, Any], outtype: str) -> list[_Planned]:
    n_blocks = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(MODEL_ARCH.QWEN2, n_blocks)
    weight_type, _, weight_storage = OUTTYPES[outtype]
    planned: list[_Planned] = []
    for name, entry in entries.items():
        if name.endswith(IGNORED_TENSOR_SUFFIXES):
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConvertError(f"unexpected tensor {name} in {entry.file} (not part of the qwen2 architecture)")
        if len(entry.shape) == 1:  # norms and biases stay F32
            ggml_type, storage = GGMLQuantizationType.F32, np.dtype("<f4")
        elif len(entry.shape) == 2:
            ggml_type, storage = weight_type, weight_storage
        else:
            raise ConvertError(f"tensor {name} has {len(entry.shape)} dimensions, expected 1 or 2: {entry.file}")
        planned.append(_Planned(entry, gguf_name, ggml_type, storage, entry.n_elements * storage.itemsize))
    _check_complete(planned, config)
    order = {n: i for i, n in enumerate(("token_embd", "output_norm", "output"))}
    planned.sort(key=lambda p: _sort_key(p.gguf_name, order))
    return planned


def _sort_key(name: str, order: dict[str, int]) -> tuple[int, int, str]:
    parts = name.split(".")
    if parts[0] == "blk":
        return (1, int(parts[1]), name)
    return (0 if parts[0] != "output" else 2, order.get(parts[0], 9), name)


def _check_complete(planned: list[_Planned], config: dict[str, Any]) -> None:
    have = {p.gguf_name: p.entry.shape for p in planned}
    hidden, vocab, ffn = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    kv_dim = hidden // heads * kv
    expected = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    for i in range(config["num_hidden_layers"]):
        b = f"blk.{i}."
        expected.update({
            b + "attn_norm.weight": (hidden,), b + "ffn_norm.weight": (hidden,),
            b + "attn_q.weight": (hidden, hidden), b + "attn_q.bias": (hidden,),
            b + "attn_k.weight": (kv_dim, hidden), b + "attn_k.bias": (kv_dim,),
            b + "attn_v.weight": (kv_dim, hidden), b + "attn_v.bias": (kv_dim,),
            b + "attn_output.weight": (hidden, hidden),
            b + "ffn_gate.weight": (ffn, hidden), b + "ffn_up.weight": (ffn, hidden),
            b + "ffn_down.weight": (hidden, ffn),
        })
    if "output.weight" in have:
        expected["output.weight"] = (vocab, hidden)
    for name, shape in expected.items():
        if name not in have:
            raise ConvertError(
                f"the checkpoint lacks tensor {name} (its config.json promises it); incomplete download?")
        if tuple(have[name]) != shape:
            raise ConvertError(f"tensor {name} has shape {list(have[name])}, config.json implies {list(shape)}")
    extra = sorted(set(have) - set(expected))
    if extra:
        raise ConvertError(f"unexpected tensors for this config: {', '.join(extra[:3])}")


def tensors_equal(a: TensorEntry, b: TensorEntry) -> bool:
    """Exact equality, streamed block by block."""
    if a.shape != b.shape:
        return False
    for x, y in zip(read_chunks(a), read_chunks(b)):
        if a.dtype == b.dtype:
            if not np.array_equal(x, y):
                return False
        elif not np.array_equal(to_float32(x, a.dtype), to_float32(y, b.dtype)):
            return False
    return True


def _encode(raw: np.ndarray, src_dtype: str, plan: _Planned) -> np.ndarray:
    if plan.ggml_type is GGMLQuantizationType.BF16:
        if src_dtype == "BF16":
            return raw
        return float32_to_bf16_bits(to_float32(raw, src_dtype))
    values = to_float32(raw, src_dtype)
    if plan.ggml_type is GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return values


# --------------------------------------------------------------------------- conversion


def pick_outtype(entries: dict[str, TensorEntry], requested: str) -> str:
    """'auto' keeps the checkpoint's precision exactly: bf16 -> bf16, f16 -> f16, otherwise f32."""
    if requested != "auto":
        if requested not in OUTTYPES:
            raise ConvertError(f"unknown output type {requested!r}; choose auto, {', '.join(OUTTYPES)}")
        return requested
    dtypes = {e.dtype for e in entries.values() if len(e.shape) == 2}
    if dtypes == {"BF16"}:
        return "bf16"
    if dtypes == {"F16"}:
        return "f16"
    return "f32"


def convert_checkpoint(
    source_dir: Path,
    out_path: Path,
    *,
    outtype: str = "auto",
    name: str | None = None,
    keep_tied_duplicate: bool = False,
    progress: bool = False,
    log: Log = lambda message: None,
) -> ConvertResult:
    """Write out_path (via out_path.part, renamed at the end) from the checkpoint in source_dir."""
    started = time.perf_counter()
    source_dir, out_path = Path(source_dir), Path(out_path)
    config = load_config(source_dir)
    tokenizer = load_tokenizer(source_dir, config["vocab_size"])
    entries = open_checkpoint(source_dir)
    outtype = pick_outtype(entries, outtype)
    warnings: list[str] = []

    tied = bool(config.get("tie_word_embeddings", False))
    output_note, saved = _decide_output(entries, tied, keep_tied_duplicate, outtype, warnings, log)
    planned = _plan_tensors(entries, config, outtype)

    tmp = out_path.with_name(out_path.name + ".part")
    try:
        writer = _writer(tmp, config, tokenizer, outtype, name or source_dir.name)
        for p in planned:
            raw_dtype = None if p.ggml_type is not GGMLQuantizationType.BF16 else p.ggml_type
            writer.add_tensor_info(p.gguf_name, p.entry.shape, p.storage, p.nbytes, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        _stream_tensors(writer, planned, progress)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    result = ConvertResult(
        path=out_path,
        outtype=outtype,
        source_dtypes=sorted({e.dtype for e in entries.values()}),
        n_tensors=len(planned),
        n_params=sum(p.entry.n_elements for p in planned),
        file_size=out_path.stat().st_size,
        tied_embeddings=tied,
        output_tensor=output_note,
        bytes_saved=saved,
        vocab_size=len(tokenizer.tokens),
        n_merges=len(tokenizer.special.merges),
        special_token_ids=dict(tokenizer.special.special_token_ids),
        seconds=round(time.perf_counter() - started, 3),
        warnings=warnings,
    )
    return result


def _decide_output(entries: dict[str, TensorEntry], tied: bool, keep: bool, outtype: str,
                   warnings: list[str], log: Log) -> tuple[str, int]:
    """Drop lm_head when the config ties it and it equals the embedding; returns (note, bytes saved)."""
    lm_head = entries.get("lm_head.weight")
    embed = entries.get("model.embed_tokens.weight")
    if lm_head is None:
        if not tied:
            raise ConvertError("the checkpoint has no lm_head.weight and config.json does not tie embeddings")
        return "absent from checkpoint (tied: llama.cpp reuses token_embd)", 0
    if not tied:
        return "written (untied)", 0
    if embed is None:
        return "written", 0  # _check_complete reports the missing embedding
    if not tensors_equal(lm_head, embed):
        message = "config ties the embeddings but lm_head.weight differs from embed_tokens.weight; kept it"
        warnings.append(message)
        log(f"warning: {message}")
        return "written (differs from the embedding)", 0
    if keep:
        return "written (duplicate kept on request)", 0
    del entries["lm_head.weight"]
    saved = lm_head.n_elements * OUTTYPES[outtype][2].itemsize
    log(f"lm_head.weight equals the tied embedding: not written ({saved / 1e6:.1f} MB saved)")
    return "dropped (duplicate of the tied embedding)", saved


def _writer(path: Path, config: dict[str, Any], tokenizer: Tokenizer, outtype: str, name: str) -> GGUFWriter:
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    w = GGUFWriter(path, GGUF_ARCH)
    w.add_type("model")
    w.add_name(name)
    heads = config["num_attention_heads"]
    w.add_context_length(int(config.get("max_position_embeddings") or 32768))
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    w.add_rope_freq_base(rope_theta(config))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "yarn" and "factor" in scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(scaling["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    w.add_file_type(int(OUTTYPES[outtype][1]))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokenizer.tokens)
    w.add_token_types(tokenizer.token_types)
    tokenizer.special.add_to_gguf(w, quiet=True)
    if "bos" not in tokenizer.special.add_special_token:
        w.add_add_bos_token(False)  # Qwen's tokenizer never prepends a BOS token
    return w


def _stream_tensors(writer: GGUFWriter, planned: list[_Planned], progress: bool) -> None:
    from tqdm import tqdm

    assert writer.fout is not None and len(writer.fout) == 1
    fout = writer.fout[0]
    total = sum(p.nbytes for p in planned)
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress, leave=False) as bar:
        for p in planned:
            writer.write_padding(fout, fout.tell())
            written = 0
            for raw in read_chunks(p.entry):
                data = _encode(raw, p.entry.dtype, p)
                data.tofile(fout)
                written += data.nbytes
                bar.update(data.nbytes)
            if written != p.nbytes:
                raise ConvertError(f"wrote {written} bytes for {p.gguf_name}, expected {p.nbytes}")
            writer.write_padding(fout, p.nbytes)
        fout.flush()
        os.fsync(fout.fileno())
