"""Bad model files, end to end: the API and the `edgeqwen` command give one line naming the problem
and exit non-zero, before llama.cpp opens the file (it aborts the process on some corrupt files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from edgeqwen import EdgeQwen
from edgeqwen.errors import EdgeQwenError, ModelFileError, ModelNotFoundError

from conftest import run_cli

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def tiny_gguf(path: Path, arch: str = "qwen2", *, template: bool = True) -> Path:
    """A small, well-formed GGUF (metadata, vocabulary, f32 tensors) that is not a usable model."""
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_context_length(256)
    w.add_embedding_length(8)
    w.add_block_count(1)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_token_list(["<|im_start|>", "<|im_end|>", "a", "b"])
    if template:
        w.add_chat_template(TEMPLATE)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def truncated(path: Path) -> Path:
    """A well-formed GGUF cut in the middle of its tensor data, as a broken download leaves it."""
    data = tiny_gguf(path.with_name("whole.gguf")).read_bytes()
    path.write_bytes(data[: len(data) * 9 // 10])
    return path


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# name -> (how to make it from a tmp dir, what the message must say)
CASES = {
    "missing": (lambda d: d / "nowhere.gguf", "not found"),
    "empty": (lambda d: written(d / "empty.gguf", b""), "empty"),
    "truncated": (lambda d: truncated(d / "cut.gguf"), "truncated"),
    "not_gguf": (lambda d: written(d / "notes.gguf", b"just some text\n" * 100), "not a GGUF file"),
    "safetensors": (lambda d: written(d / "model.safetensors",
                                      b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(64)), "not a GGUF file"),
    "other_arch": (lambda d: tiny_gguf(d / "llama.gguf", "llama"), "architecture is 'llama'"),
    "no_template": (lambda d: tiny_gguf(d / "base.gguf", template=False), "no chat template"),
    "directory": (lambda d: d, "directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_api_refuses_bad_model_file_in_one_line(tmp_path, case):
    make, fragment = CASES[case]
    path = make(tmp_path)
    with pytest.raises(EdgeQwenError) as error:
        EdgeQwen(path)
    message = str(error.value)
    assert "\n" not in message and fragment in message
    assert str(path) in message
    assert isinstance(error.value, (ModelFileError, ModelNotFoundError))


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_refuses_bad_model_file_in_one_line(invoke, tmp_path, case):
    make, fragment = CASES[case]
    path = make(tmp_path)
    done = invoke("run", "--task", "sentiment", "hello", "--model", str(path))
    stderr = done.stderr
    assert done.returncode == 1, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and fragment in stderr and str(path) in stderr
    assert "Traceback" not in stderr and done.stdout == ""


def test_cli_info_and_doctor_name_the_bad_file(invoke, tmp_path):
    path = CASES["truncated"][0](tmp_path)
    info = invoke("info", str(path))
    assert info.returncode == 1 and info.stderr.count("\n") == 1 and "truncated" in info.stderr
    doctor = invoke("doctor", "--model", str(path))
    assert doctor.returncode == 1 and "truncated" in doctor.stderr and "Traceback" not in doctor.stderr


def test_cli_gguf_that_llama_cpp_rejects_is_one_line(tmp_path):
    """A subprocess: llama.cpp writes to the process's stderr itself, which only a real process shows."""
    path = tiny_gguf(tmp_path / "hollow.gguf")  # right architecture and template, but no layers
    done = run_cli("run", "--task", "sentiment", "hello", "--model", str(path), timeout=120)
    stderr = done.stderr.decode()
    assert done.returncode == 1 and "Traceback" not in stderr and stderr.count("\n") == 1 and str(path) in stderr
