"""`edgeqwen doctor`: the board, the llama.cpp build, and settings that fit the model (subprocess + units)."""

from __future__ import annotations

import dataclasses
import json

from edgeqwen.doctor import cpu_features, estimate_bytes, kv_bytes_per_token, read_memory, recommend_ctx
from edgeqwen.board import physical_cores
from edgeqwen.gguf_info import inspect_gguf

from conftest import STANDIN, run_cli


def test_doctor_reports_this_board_and_the_model():
    done = run_cli("doctor", "--json", "--model", str(STANDIN), timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    memory = report["memory"]
    assert memory["total"] > 0 and 0 < memory["available"] <= memory["total"]
    assert report["cores"]["physical"] == physical_cores() and report["recommended_threads"] == physical_cores()
    assert report["cores"]["usable"] >= report["cores"]["physical"] >= 1
    assert "CPU :" in report["llama_cpp_features"]
    assert report["cpu_features"]  # x86 here: avx2, avx512f, ...; NEON and dotprod on ARM
    model = report["model"]
    assert model["architecture"] == "qwen2" and model["file_bytes"] == STANDIN.stat().st_size
    assert model["kv_bytes_per_token"] == 24 * 2 * (896 // 14) * 2 * 2  # the stand-in: 12 KiB per token
    assert report["recommended_ctx"] in (256, 512, 1024, 2048)
    assert report["warnings"] == [] or all("will not fit" not in w for w in report["warnings"])


def test_doctor_text_output():
    done = run_cli("doctor", "--model", str(STANDIN), timeout=120)
    out = done.stdout.decode()
    assert done.returncode == 0
    for heading in ("RAM", "cores", "CPU features", "llama.cpp", "KV cache", "estimate", "recommended"):
        assert heading in out
    assert "--threads" in out and "--ctx" in out


def test_doctor_warns_when_the_model_will_not_fit():
    done = run_cli("doctor", "--model", str(STANDIN), "--ram-mb", "400", timeout=120)
    assert done.returncode == 0
    warning = done.stderr.decode()
    assert "warning: the model will not fit" in warning and "--ctx 2048" in warning
    assert "no --ctx fits" in done.stdout.decode()


def test_doctor_plans_a_smaller_context_for_a_small_board():
    done = run_cli("doctor", "--json", "--model", str(STANDIN), "--ram-mb", "850", timeout=120)
    report = json.loads(done.stdout)
    assert report["recommended_ctx"] is not None and report["recommended_ctx"] <= 2048
    assert estimate_bytes(inspect_gguf(STANDIN), report["recommended_ctx"]) <= 850 * 2**20 * 0.8


def test_doctor_without_a_model_still_reports_the_board(tmp_path):
    done = run_cli("doctor", "--model", str(tmp_path / "none.gguf"), timeout=120)
    assert done.returncode == 1
    assert "RAM" in done.stdout.decode() and "none.gguf" in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def test_estimate_follows_the_engine_allocation():
    info = inspect_gguf(STANDIN)
    per_token = kv_bytes_per_token(info)
    assert estimate_bytes(info, 1024) - estimate_bytes(info, 512) == 512 * per_token
    assert estimate_bytes(info, 512) > info.file_size + 512 * per_token
    # Qwen1.5-0.5B (no grouped-query attention): 96 KiB per token, as the README says.
    qwen15 = dataclasses.replace(info, embedding_length=1024, head_count=16, head_count_kv=16, block_count=24)
    assert kv_bytes_per_token(qwen15) == 96 * 1024
    assert recommend_ctx(info, None) == 2048 and recommend_ctx(info, 100 * 2**20) is None


def test_cpu_features_from_cpuinfo_text():
    x86 = cpu_features("processor : 0\nflags : fpu pni ssse3 avx avx2 fma\n", "x86_64")
    assert x86["avx2"] and x86["sse3"] and not x86["avx512f"]
    pi5 = cpu_features("processor : 0\nFeatures : fp asimd evtstrm aes asimdhp asimddp\n", "aarch64")
    assert pi5["NEON (asimd)"] and pi5["dotprod (asimddp)"]
    pi4 = cpu_features("Features : fp asimd evtstrm crc32 cpuid\n", "aarch64")
    assert pi4["NEON (asimd)"] and not pi4["dotprod (asimddp)"]


def test_read_memory_parses_meminfo():
    memory = read_memory("MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     500 kB\n")
    assert memory.total == 1000 * 1024 and memory.available == 500 * 1024
