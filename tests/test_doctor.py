"""`edgeqwen doctor`: the board, the llama.cpp build, and settings that fit the model (in-process CLI + units)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from edgeqwen.board import Memory, cpu_features, physical_cores, read_memory
from edgeqwen.gguf_info import inspect_gguf
from edgeqwen.memory_plan import estimate_bytes, kv_bytes_per_token, plan_memory


def test_doctor_reports_this_board_and_the_model(invoke, model_path):
    done = invoke("doctor", "--json", "--model", str(model_path))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    memory = report["memory"]
    assert memory["total"] > 0 and 0 < memory["available"] <= memory["total"]
    assert report["cores"]["physical"] == physical_cores() and report["recommended_threads"] == physical_cores()
    assert report["cores"]["usable"] >= report["cores"]["physical"] >= 1
    assert "CPU :" in report["llama_cpp_features"]
    assert report["cpu_features"]  # x86 here: avx2, avx512f, ...; NEON and dotprod on ARM
    model = report["model"]
    assert model["architecture"] == "qwen2" and model["file_bytes"] == model_path.stat().st_size
    assert model["kv_bytes_per_token"] == 24 * 2 * (896 // 14) * 2 * 2  # the stand-in: 12 KiB per token
    assert report["recommended_ctx"] in (256, 512, 1024, 2048)
    assert report["warnings"] == [] or all("will not fit" not in w for w in report["warnings"])


def test_doctor_text_output(invoke, model_path):
    done = invoke("doctor", "--model", str(model_path))
    out = done.stdout
    assert done.returncode == 0
    for heading in ("RAM", "cores", "CPU features", "llama.cpp", "KV cache", "estimate", "recommended"):
        assert heading in out
    assert "--threads" in out and "--ctx" in out


def test_doctor_warns_when_the_model_will_not_fit(invoke, model_path):
    done = invoke("doctor", "--model", str(model_path), "--ram-mb", "400")
    assert done.returncode == 0
    warning = done.stderr
    # the best plan: shorter saves little here
    assert "warning: the model will not fit" in warning and "--ctx 2048" in warning
    assert "no --ctx fits" in done.stdout


def test_doctor_plans_for_a_given_board(invoke, model_path):
    done = invoke("doctor", "--json", "--model", str(model_path), "--ram-mb", "1400")
    report = json.loads(done.stdout)
    plan = report["plan"]
    assert plan["fits"] and (report["recommended_ctx"], report["recommended_kv_cache"]) == (plan["n_ctx"],
                                                                                            plan["kv_type"])
    assert estimate_bytes(inspect_gguf(model_path), plan["n_ctx"], plan["kv_type"]) <= 1400 * 2**20 * 0.5


def test_doctor_without_a_model_still_reports_the_board(invoke, tmp_path):
    done = invoke("doctor", "--model", str(tmp_path / "none.gguf"))
    assert done.returncode == 1
    assert "RAM" in done.stdout and "none.gguf" in done.stderr and "Traceback" not in done.stderr


def test_estimate_follows_the_engine_allocation(model_path):
    info = inspect_gguf(model_path)
    per_token = kv_bytes_per_token(info)
    assert estimate_bytes(info, 1024) - estimate_bytes(info, 512) == 512 * per_token
    assert estimate_bytes(info, 512) > info.file_size + 512 * per_token
    # Qwen1.5-0.5B (no grouped-query attention): 96 KiB per token, as the README says.
    qwen15 = dataclasses.replace(info, embedding_length=1024, head_count=16, head_count_kv=16, block_count=24)
    assert kv_bytes_per_token(qwen15) == 96 * 1024
    assert kv_bytes_per_token(qwen15, "q8_0") == 96 * 1024 * 17 // 32  # 34 bytes per 32 values


def board(mib: int) -> Memory:
    return Memory(total=mib << 20, available=mib << 20, cgroup_limit=None)


def test_the_memory_plan_fits_the_model_to_the_board(model_path):
    """Defaults chosen by the model's KV cost and the board's memory, not by the stand-in's."""
    info = inspect_gguf(model_path)
    # Qwen1.5-0.5B's shape and its Q4_K_M's size (no tensor list: the weights are the file's size)
    qwen15 = dataclasses.replace(info, embedding_length=1024, head_count=16, head_count_kv=16, block_count=24,
                                 file_size=336_000_000, weights=())
    roomy = plan_memory(qwen15, board(8192))
    assert (roomy.kv_type, roomy.n_ctx, roomy.fits) == ("f16", 2048, True)
    small = plan_memory(qwen15, board(1024))  # a 1 GB board: half of it at most
    assert (small.kv_type, small.n_ctx, small.fits) == ("q8_0", 1024, True)
    assert small.estimate_bytes <= small.budget_bytes == 512 * 2**20
    assert plan_memory(qwen15, board(1024), n_ctx=2048).kv_type == "q8_0"  # what is given is kept
    assert plan_memory(qwen15, board(1024), kv_type="f16").n_ctx == 512
    given = plan_memory(qwen15, board(256), n_ctx=4096, kv_type="f16")
    assert (given.n_ctx, given.kv_type, given.chosen_by, given.fits) == (4096, "f16", "you", False)
    # Nothing fits: no pointless cut of the context when the model file is nearly all of the estimate.
    tight = plan_memory(info, board(1024))
    assert not tight.fits and (tight.kv_type, tight.n_ctx) == ("f16", 2048)


def test_the_plan_reaches_the_engine_and_the_environment_sets_the_board(invoke, model_path):
    code = ("import json; from edgeqwen.engine import Engine; e = Engine(%r); "
            "print(json.dumps([e.n_ctx, e.kv_type, e.memory_plan.describe()]))" % str(model_path))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "EDGEQWEN_MEMORY": "300M"})
    assert done.returncode == 0, done.stderr[-1000:]
    n_ctx, kv_type, described = json.loads(done.stdout.splitlines()[-1])
    assert (n_ctx, kv_type) == (2048, "f16") and "nothing fits" in described
    assert "may not fit this board's memory" in done.stderr  # said once, on stderr
    bad = invoke("doctor", "--model", str(model_path), env_extra={"EDGEQWEN_MEMORY": "lots"})
    assert bad.returncode == 2 and "EDGEQWEN_MEMORY" in bad.stderr and "Traceback" not in bad.stderr


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


def test_a_build_that_dies_on_this_cpu_is_reported_with_the_flags_to_rebuild_with(monkeypatch):
    from edgeqwen import doctor

    died = subprocess.CompletedProcess([], -4, "", "")
    monkeypatch.setattr(doctor.subprocess, "run", lambda *args, **kwargs: died)
    line, error = doctor.probe_build()
    assert line == "" and "illegal instruction" in error and "CMAKE_ARGS=" in error and "\n" not in error
