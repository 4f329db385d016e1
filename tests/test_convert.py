"""`edgeqwen quantize`: tiny random Qwen2 checkpoints in the hub's layouts, converted without torch,
checked against transformers' Qwen2 forward pass (torch CPU, test-only), quantized and verified.

Reference-match tolerance (logits of the last position, llama.cpp vs transformers in float32):
max |difference| <= REL_TOL * max |reference logit|, and the same arg-max. llama.cpp keeps its KV cache
in F16, so even an F32 GGUF differs (worst seen 6.8e-4 relative); an F16 GGUF 1.2e-3; a BF16 GGUF
(activations rounded to bf16 in the matmuls) 5.6e-3. Logits here span about +-18.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edgeqwen.convert import QuantizeOptions, convert_checkpoint, fetch_checkpoint, read_manifest, run_quantize
from edgeqwen.convert.quantize import quantize_gguf
from edgeqwen.errors import ConvertError, ModelFetchError
from edgeqwen.gguf_info import inspect_gguf

# noqa: E402
from convert_fixtures import make_checkpoint, make_hub_cache, read_gguf_metadata, write_tokenizer_from_gguf

REPO = Path(__file__).resolve().parent.parent
HUB_REPO = "Qwen/Qwen1.5-0.5B-Chat"
REL_TOL = {"f32": 2e-3, "f16": 3e-3, "bf16": 1.5e-2}
PROMPTS = [
    "Hello world, this is a test of the converter.",
    "你好，世界！今天天气很好，我们去公园散步吧。",
    "emoji 😀🚀 and code: def f(x): return x * 2  # 注释",
    "The delivery was late and the box was damaged.",
]
MIXED_TEXTS = [
    "Hello 世界! 我爱北京天安门 😀🚀 naïve café — 123456 tokens\n\n  spaces\tand tabs",
    "这家餐厅的服务太差了，I will never come back!!! 👎👎",
    "  leading and trailing  ",
    "def f(x):\n    return x ** 2  # 注释 ｜全角｜ 𠀀 Ё ü 🇨🇳",
]
THREADS = 1  # the CI machine has 2 shared cores; one thread avoids llama.cpp spin-waiting on a busy box


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id",
                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")


def tokenizer_fields(path: Path) -> dict:
    metadata = read_gguf_metadata(path)
    return {k: metadata[k] for k in TOKENIZER_KEYS if k in metadata}


def tensor_types(path: Path) -> dict[str, str]:
    from edgeqwen.gguf_info import _StrictReader  # skips the string arrays: fast

    return {t.name: t.tensor_type.name for t in _StrictReader(path, "r").tensors}


@pytest.fixture(scope="session")
def tokenizer_dir(work, model_path) -> Path:
    """Qwen2's tokenizer files, written from the stand-in model's GGUF (so these tests need that file)."""
    dest = work / "tokenizer"
    write_tokenizer_from_gguf(model_path, dest)
    return dest


@pytest.fixture(scope="session")
def tied_f32(work, tokenizer_dir) -> Path:
    """Tied embeddings, lm_head stored as an exact copy (as Qwen1.5 publishes it), F32, one file."""
    return make_checkpoint(work / "tied-f32", tokenizer_dir, tied=True, lm_head="equal", dtype="F32")


@pytest.fixture(scope="session")
def tied_f32_gguf(tied_f32, work) -> Path:
    return convert_checkpoint(tied_f32, work / "tied-f32.gguf", outtype="f32").path


@pytest.fixture(scope="session")
def untied_bf16_sharded(work, tokenizer_dir) -> Path:
    """Untied, BF16, three shards with an index, grouped-query attention."""
    return make_checkpoint(work / "untied-bf16", tokenizer_dir, tied=False, lm_head="random", dtype="BF16",
                           shards=3, seed=1)


@pytest.fixture(scope="session")
def tied_no_head_f16(work, tokenizer_dir) -> Path:
    """Tied, no lm_head stored at all, F16, no GQA."""
    return make_checkpoint(work / "tied-f16", tokenizer_dir, tied=True, lm_head="none", dtype="F16",
                           heads=4, kv_heads=4, seed=2)


def _reference_logits(checkpoint: Path, token_lists: list[list[int]]) -> list[np.ndarray]:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return [model(torch.tensor([tokens])).logits[0, -1].double().numpy() for tokens in token_lists]


def _check_against_reference(checkpoint: Path, gguf_path: Path, outtype: str) -> float:
    from edgeqwen.engine import Engine

    engine = Engine(gguf_path, n_ctx=256, n_threads=THREADS)
    token_lists = [engine.tokenize(p) for p in PROMPTS]
    ours = [engine.next_token_logits(t).astype(np.float64) for t in token_lists]
    reference = _reference_logits(checkpoint, token_lists)
    worst = 0.0
    for prompt, a, b in zip(PROMPTS, ours, reference):
        rel = float(np.abs(a - b).max() / np.abs(b).max())
        worst = max(worst, rel)
        assert rel <= REL_TOL[outtype], f"{outtype}: logits differ by {rel:.2e} (relative) on {prompt!r}"
        assert int(a.argmax()) == int(b.argmax()), f"{outtype}: top-1 differs on {prompt!r}"
        assert float(b.std()) > 1.0  # the random weights give the logits a real spread
    print(f"\n{gguf_path.name}: worst relative logit error vs transformers {worst:.2e} (tolerance {REL_TOL[outtype]})")
    return worst


# --------------------------------------------------------------------------- conversion vs the reference


def test_tied_f32_matches_transformers_and_drops_duplicate(tied_f32, work):
    result = convert_checkpoint(tied_f32, work / "tied-f32-check.gguf", outtype="f32")
    info = inspect_gguf(result.path)
    assert info.tied_embeddings and info.file_type == "F32"
    assert result.output_tensor.startswith("dropped")
    assert result.bytes_saved == 151936 * 64 * 4
    _check_against_reference(tied_f32, result.path, "f32")


def test_untied_bf16_sharded_to_f16_and_bf16(untied_bf16_sharded, work):
    for outtype in ("f16", "auto"):
        result = convert_checkpoint(untied_bf16_sharded, work / f"untied-{outtype}.gguf", outtype=outtype)
        assert result.outtype == ("f16" if outtype == "f16" else "bf16")  # auto keeps bf16 exactly
        assert not inspect_gguf(result.path).tied_embeddings and result.bytes_saved == 0
        assert result.output_tensor == "written (untied)"
        _check_against_reference(untied_bf16_sharded, result.path, result.outtype)


def test_tied_without_stored_head_f16(tied_no_head_f16, work):
    result = convert_checkpoint(tied_no_head_f16, work / "tied-f16.gguf")
    assert result.outtype == "f16" and result.output_tensor.startswith("absent")
    _check_against_reference(tied_no_head_f16, result.path, "f16")


def test_norms_and_biases_stay_f32(work, tied_f32):
    path = work / "types.gguf"
    convert_checkpoint(tied_f32, path, outtype="f16")
    types = tensor_types(path)
    assert all(types[n] == "F32" for n in types if n.endswith((".bias", "norm.weight")))
    assert types["blk.0.attn_q.weight"] == "F16" and "output.weight" not in types


def test_tied_head_that_differs_is_kept(work, tokenizer_dir):
    ckpt = make_checkpoint(work / "tied-differs", tokenizer_dir, tied=True, lm_head="random", layers=1, seed=3)
    result = convert_checkpoint(ckpt, work / "tied-differs.gguf")
    assert result.output_tensor.startswith("written") and result.warnings
    assert not inspect_gguf(result.path).tied_embeddings


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_fields_match_llama_cpp_converter(tied_f32_gguf, model_path):
    """The tokenizer metadata written equals what llama.cpp's own converter wrote into the stand-in."""
    ours, theirs = tokenizer_fields(tied_f32_gguf), tokenizer_fields(model_path)
    assert set(ours) == set(TOKENIZER_KEYS)
    for key in TOKENIZER_KEYS:
        assert ours[key] == theirs[key], key


def test_tokenizer_round_trip_matches_hf(tied_f32_gguf, tied_f32):
    transformers = pytest.importorskip("transformers")
    from edgeqwen.engine import Engine

    engine = Engine(tied_f32_gguf, n_ctx=256, n_threads=THREADS)
    reference = transformers.AutoTokenizer.from_pretrained(tied_f32)
    for text in MIXED_TEXTS:
        ids = engine.tokenize(text)
        assert ids == reference.encode(text, add_special_tokens=False), text
        assert engine.detokenize(ids) == text
    messages = [{"role": "user", "content": "你好 👋 hello"}]
    rendered = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert engine.chat_tokens(messages) == reference.encode(rendered, add_special_tokens=False)


def test_vocab_json_and_merges_txt_are_enough(work, tied_f32, tied_f32_gguf):
    """Without tokenizer.json the converter reads vocab.json + merges.txt + tokenizer_config.json."""
    folder = work / "no-tokenizer-json"
    shutil.copytree(tied_f32, folder)
    (folder / "tokenizer.json").unlink()
    convert_checkpoint(folder, work / "vocab-json.gguf")
    assert tokenizer_fields(work / "vocab-json.gguf") == tokenizer_fields(tied_f32_gguf)


# --------------------------------------------------------------------------- failures: one line each


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _one_line_error(excinfo, *words: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    for word in words:
        assert word in message, message
    return message


def test_unsupported_architecture(work, tied_f32):
    folder = _copy(tied_f32, work / "llama-arch")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConvertError) as excinfo:
        convert_checkpoint(folder, work / "x.gguf")
    _one_line_error(excinfo, "unsupported architecture", "LlamaForCausalLM")
    assert not (work / "x.gguf").exists() and not (work / "x.gguf.part").exists()


def test_missing_tokenizer(work, tied_f32):
    folder = _copy(tied_f32, work / "no-tokenizer")
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (folder / name).unlink()
    with pytest.raises(ConvertError) as excinfo:
        convert_checkpoint(folder, work / "x.gguf")
    _one_line_error(excinfo, "missing tokenizer")


@pytest.mark.parametrize("damage", ["truncated", "garbage-header", "huge-header-length", "bad-dtype"])
def test_corrupt_safetensors(work, tied_f32, damage):
    folder = _copy(tied_f32, work / f"corrupt-{damage}")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "garbage-header":
        weights.write_bytes(data[:8] + b"\xff{not json" + data[18:])
    elif damage == "huge-header-length":
        weights.write_bytes((1 << 40).to_bytes(8, "little") + data[8:])
    else:
        weights.write_bytes(data.replace(b'"dtype":"F32"', b'"dtype":"I64"', 1))
    with pytest.raises(ConvertError) as excinfo:
        convert_checkpoint(folder, work / "x.gguf")
    _one_line_error(excinfo, "model.safetensors")
    assert not (work / "x.gguf").exists() and not (work / "x.gguf.part").exists()


def test_missing_shard(work, tokenizer_dir):
    folder = make_checkpoint(work / "missing-tensor", tokenizer_dir, layers=1, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    (folder / index["weight_map"]["model.norm.weight"]).unlink()
    with pytest.raises(ConvertError) as excinfo:
        convert_checkpoint(folder, work / "x.gguf")
    _one_line_error(excinfo, "missing checkpoint shard")


# --------------------------------------------------------------------------- fetching through the hub's layouts


def test_fetch_from_hub_cache_layout(work, tied_f32):
    """--local-dir pointing at a Hugging Face cache: huggingface_hub resolves refs/main -> snapshot, offline."""
    cache = work / "hf-cache"
    make_hub_cache(cache, HUB_REPO, tied_f32, commit="c" * 40)
    fetched = fetch_checkpoint(HUB_REPO, local_dir=cache)
    assert fetched.origin == "hub-cache" and fetched.commit == "c" * 40
    assert (fetched.path / "config.json").is_file() and (fetched.path / "model.safetensors").is_file()
    again = fetch_checkpoint(HUB_REPO, local_dir=cache / "models--Qwen--Qwen1.5-0.5B-Chat")
    assert again.path == fetched.path
    with pytest.raises(ModelFetchError) as excinfo:
        fetch_checkpoint(HUB_REPO, revision="no-such-branch", local_dir=cache)
    _one_line_error(excinfo, "no-such-branch")


def test_fetch_from_plain_folder_and_bad_folder(work, tied_f32):
    assert fetch_checkpoint(HUB_REPO, local_dir=tied_f32).path == tied_f32
    with pytest.raises(ModelFetchError) as excinfo:
        fetch_checkpoint(HUB_REPO, local_dir=work)
    _one_line_error(excinfo, "config.json")


def test_fetch_without_network_fails_fast_naming_local_dir(work):
    started = time.perf_counter()
    with pytest.raises(ModelFetchError) as excinfo:
        # A closed port on this machine stands in for an unreachable Hub.
        fetch_checkpoint(HUB_REPO, cache_dir=work / "empty-cache", endpoint="http://127.0.0.1:9", progress=False)
    _one_line_error(excinfo, "cannot reach the Hugging Face Hub", "--local-dir")
    assert time.perf_counter() - started < 30


# --------------------------------------------------------------------------- quantize, verify, manifest


def test_quantize_pipeline_from_hub_cache(invoke, work, tied_f32):
    cache = work / "hf-cache-pipeline"
    make_hub_cache(cache, HUB_REPO, tied_f32, commit="d" * 40)
    out = work / "models" / "tiny-q8_0.gguf"
    result = run_quantize(QuantizeOptions(local_dir=cache, qtype="Q8_0", output=out, threads=THREADS,
                                          progress=False, verify_prompts=PROMPTS[:3]), log=lambda m: None)
    assert result.output == out and inspect_gguf(out).file_type == "Q8_0"
    manifest = read_manifest(out)
    assert manifest is not None and manifest == json.loads(result.manifest_path.read_text())
    assert manifest["source"]["repo"] == HUB_REPO and manifest["source"]["commit"] == "d" * 40
    assert manifest["sha256"] and manifest["size_bytes"] == out.stat().st_size
    assert manifest["conversion"]["bytes_saved_unquantized"] == 151936 * 64 * 4
    verification = manifest["verification"]
    assert verification["passed"] and verification["top1_agreement"] >= 0.8 and verification["mean_kl"] < 0.02
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-q8_0.gguf", "tiny-q8_0.gguf.manifest.json",
                                                            "tiny-q8_0.gguf.sha256"]
    # heads record it
    assert json.loads((out.parent / "tiny-q8_0.gguf.sha256").read_text())["sha256"] == manifest["sha256"]

    info = invoke("info", str(out))
    assert info.returncode == 0, info.stderr
    assert "manifest" in info.stdout and "verification.mean_kl" in info.stdout and HUB_REPO in info.stdout


def test_failed_quantize_leaves_no_file(work, tied_f32, monkeypatch):
    """A run that fails after quantizing (here: verification) leaves nothing under the final name."""
    import edgeqwen.convert.pipeline as pipeline
    from edgeqwen.errors import VerificationError

    def failing_verify(*args, **kwargs):
        raise VerificationError("forced failure")

    monkeypatch.setattr(pipeline, "verify_quantized", failing_verify)
    out = work / "models-fail" / "tiny-q4_0.gguf"
    with pytest.raises(VerificationError):
        run_quantize(QuantizeOptions(local_dir=tied_f32, qtype="Q4_0", output=out, threads=THREADS, progress=False),
                     log=lambda m: None)
    assert list(out.parent.iterdir()) == []


def test_quantize_gguf_refuses_bad_input(work, tied_f32_gguf):
    bad = work / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(Exception) as excinfo:
        quantize_gguf(bad, work / "never.gguf", "Q4_0")
    assert "\n" not in str(excinfo.value)
    assert not (work / "never.gguf").exists()
    with pytest.raises(ConvertError):
        quantize_gguf(tied_f32_gguf, work / "never.gguf", "Q3_K")


@pytest.fixture(scope="session")
def qwen15_tiny(work, tokenizer_dir) -> Path:
    """Qwen1.5's layout in small: its config keys, tied embeddings with lm_head stored as a copy, no
    grouped-query attention, BF16, four blocks (so a head can read a middle one)."""
    return make_checkpoint(work / "qwen15-tiny", tokenizer_dir, layers=4, heads=4, kv_heads=4, tied=True,
                           lm_head="equal", dtype="BF16", seed=5)


def test_quantize_leaves_a_ready_model(work, qwen15_tiny):
    """quantize -> heads -> run: the new model's roles use heads trained for it, with no warning."""
    cache = work / "hf-cache-chain"
    make_hub_cache(cache, HUB_REPO, qwen15_tiny, commit="e" * 40)
    out = work / "chain-models" / "qwen1.5-0.5b-chat-q4_k_m.gguf"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeqwen", "quantize", "--local-dir", str(cache), "--output", str(out),
         "--threads", str(THREADS), "--no-verify"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head not used" not in proc.stderr, proc.stderr[-3000:]  # (a random model may miss the smoke check)
    heads = out.with_name(out.stem + ".heads")
    assert sorted(p.name for p in heads.iterdir()) == ["route.head.npz", "sentiment.head.npz"]
    manifest = read_manifest(out)
    assert manifest["quantization"] == "Q4_K_M" and [h["role"] for h in manifest["heads"]] == ["route", "sentiment"]
    for head in manifest["heads"]:
        assert 0 <= head["with_head"] <= 1 and 0 <= head["without_head"] <= 1 and head["n_held_out"] > 50
    assert "with head" in proc.stderr and "label logits" in proc.stderr  # the one-screen summary
    assert "sentiment" in proc.stdout + proc.stderr  # the smoke check

    env = {**os.environ, "EDGEQWEN_MODEL": str(out)}
    for text in ("The hotel room was filthy and the staff were rude.", "你好，请给我讲一个笑话"):
        run = subprocess.run([sys.executable, "-m", "edgeqwen", "run", "--json", "--threads", str(THREADS), text],
                             capture_output=True, text=True, timeout=300, env=env)
        assert run.returncode == 0 and "warning" not in run.stderr.lower(), run.stderr[-2000:]
        result = json.loads(run.stdout)
        assert result["route"]["task"] in ("sentiment", "chat")
        assert result["label"] in ("positive",
                                   "negative") if result["task"] == "sentiment" else result["reply"] is not None

    bad = subprocess.run([sys.executable, "-m", "edgeqwen", "quantize", "--local-dir", str(work / "nope")],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 1 and len(errors) == 1 and "--local-dir" in errors[0], bad.stderr


def test_quantize_interrupted_while_training_heads_leaves_a_usable_model(work, qwen15_tiny):
    out = work / "interrupted-models" / "tiny-q8_0.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeqwen", "quantize", "--local-dir", str(qwen15_tiny), "--type", "Q8_0",
         "--output", str(out), "--threads", str(THREADS), "--no-verify", "--no-smoke"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 600
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the model is renamed into place only once built: then the heads start
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert f"edgeqwen heads --model {out}" in stderr
    assert inspect_gguf(out).file_type == "Q8_0"
    heads = out.with_name(out.stem + ".heads")
    assert not heads.exists() or all(not p.name.startswith(".") for p in heads.iterdir())  # no half-written head

    finish = subprocess.run([sys.executable, "-m", "edgeqwen", "heads", "--model", str(out), "--role", "sentiment",
                             "--threads", str(THREADS)], capture_output=True, text=True, timeout=600)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert (heads / "sentiment.head.npz").is_file() and "sentiment" in finish.stdout


def test_chat_check_mechanics_on_a_random_model(invoke, work, tied_f32):
    """`edgeqwen chat-check` on any model file: a random one gives nonsense, but no crash, no empty
    reply and no reply past max_tokens."""
    out = work / "chat-models" / "tiny-q8_0.gguf"
    run_quantize(QuantizeOptions(local_dir=tied_f32, qtype="Q8_0", output=out, threads=THREADS, progress=False,
                                 verify=False),
                 log=lambda m: None)
    report = work / "chat-report.json"
    done = invoke("chat-check", str(REPO / "scripts" / "data" / "chat.eval.jsonl"),
                  "--limit", "4", "--max-tokens", "12", "--model", str(out), "--json", str(report))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text(encoding="utf-8"))
    for mode in ("greedy", "sampled"):
        assert result["table"][mode]["all"]["replies"] == 4 and result["table"][mode]["all"]["empty"] == 0.0
        for reply in result["replies"][mode]:
            assert reply["finish_reason"] in ("stop", "length") and reply["tokens"] <= 12
