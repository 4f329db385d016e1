"""edgeqwen bench's plain llama-cpp-python reference: tried in a child process first, loaded without llama.cpp's
extra buffer types where the default loading dies, skipped (never a crash) where nothing runs."""

from __future__ import annotations

import json
import sys

import pytest

from edgeqwen import bench

SIGILL_CHILD = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
CLEAN_CHILD = [sys.executable, "-c", "pass"]
FALLBACK_LINE = ("plain llama-cpp-python with its default loading died here (SIGILL: Illegal instruction); the "
                 "reference runs with llama.cpp's extra buffer types off, as edgeqwen's plan does on this board")


def probe(default_child: list[str], fallback_child: list[str]):
    """A probe whose children are real processes: `default_child` for the default loading, `fallback_child`
    for extra buffer types off; it records which loadings were tried."""
    tried = []

    def failure(extra_buffers: bool) -> str | None:
        tried.append(extra_buffers)
        return bench.child_failure(default_child if extra_buffers else fallback_child, timeout=60)

    return failure, tried


def choose_loading(default_child: list[str], fallback_child: list[str]) -> tuple:
    """The loading bench chooses when its probes run these children: the choice, the probes tried, the lines logged."""
    failure, tried = probe(default_child, fallback_child)
    lines: list[str] = []
    return bench.choose_reference_loading(failure, plan_repacks=False, log=lines.append), tried, lines


def test_a_child_killed_by_sigill_is_named_by_its_signal():
    assert bench.child_failure(SIGILL_CHILD, timeout=60) == "SIGILL: Illegal instruction"
    assert bench.child_failure(CLEAN_CHILD, timeout=60) is None


def test_a_child_that_exits_with_an_error_gives_its_status_and_last_line():
    command = [sys.executable, "-c", "import sys; print('first'); sys.exit('the model file is gone')"]
    assert bench.child_failure(command, timeout=60) == "exit status 1, the model file is gone"


def test_default_loading_dying_by_sigill_falls_back_to_extra_buffers_off_with_one_line():
    loading, tried, lines = choose_loading(SIGILL_CHILD, CLEAN_CHILD)
    assert loading.extra_buffers is False
    assert tried == [True, False]
    assert lines == [FALLBACK_LINE]
    assert "extra buffer types off" in loading.description and "SIGILL" in loading.description


def test_a_clean_default_loading_keeps_llama_cpp_pythons_defaults_and_says_nothing():
    loading, tried, lines = choose_loading(CLEAN_CHILD, SIGILL_CHILD)
    assert loading.extra_buffers is True
    assert tried == [True]
    assert lines == []


def test_when_both_loadings_die_the_reference_is_not_loaded_and_one_line_says_why():
    loading, tried, lines = choose_loading(SIGILL_CHILD, SIGILL_CHILD)
    assert loading.extra_buffers is None
    assert tried == [True, False]
    assert len(lines) == 1 and "not measured" in lines[0] and lines[0].count("SIGILL") == 2


def test_the_probe_command_asks_for_extra_buffers_off_only_when_told():
    on = bench.reference_probe_command("m.gguf", 2048, 2, extra_buffers=True)
    off = bench.reference_probe_command("m.gguf", 2048, 2, extra_buffers=False)
    assert on[1:] == ["-m", "edgeqwen.engine.plain", "m.gguf", "2048", "2"]
    assert off == [*on, "--no-extra-buffers"]


def test_bench_without_any_reference_still_gives_edgeqwens_own_figures(monkeypatch):
    """On the fake engine: both probes die, so the reference rows are None, printed as not measured."""
    from edgeqwen import EdgeQwen, api

    from fake_engine import FakeEngine

    commands = []

    def dies(command, timeout=bench.PROBE_TIMEOUT_S):
        commands.append(command)
        return "SIGILL: Illegal instruction"

    monkeypatch.setattr(bench, "_first_result_subprocess", lambda *args: {"first_s": 1.0, "rss_mb": 100.0})
    monkeypatch.setattr(bench, "child_failure", dies)
    monkeypatch.setattr(api, "EdgeQwen", lambda model, threads, n_ctx: EdgeQwen(engine=FakeEngine(),
                                                                                   prefix_cache=False))
    lines = []
    figures = bench.run_benchmark("fake.gguf", threads=2, log=lines.append)
    assert [command[-1] == "--no-extra-buffers" for command in commands] == [False, True]
    assert sum("could not run here" in line for line in lines) == 1
    assert figures["reference_loading"].startswith("none:")
    reference = ["floor_p50_ms", "router_floor_p50_ms", "naive_grammar_call_p50_ms", "raw_decode_tok_s",
                 "raw_json_schema_grammar_decode_tok_s", "own_prompt_chat_completion_grammar_p50_ms"]
    assert all(figures[key] is None for key in reference)
    assert all(value is None for key, value in figures["ratios"].items() if "floor" in key or "raw" in key)
    assert figures["sentiment_short_warm_p50_ms"] > 0 and figures["structured_json_schema_decode_tok_s"] > 0
    table = bench.format_table(figures)
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in table.splitlines()}
    assert rows["floor_p50_ms"] == rows["ratio: chat_decode_over_raw"] == bench.NOT_MEASURED
    assert rows["reference_loading"] == figures["reference_loading"]
    assert "None" not in table
    assert json.loads(json.dumps(figures))["floor_p50_ms"] is None


def test_the_reference_loads_and_runs_with_extra_buffers_off(model_path):
    from edgeqwen.engine.plain import PlainLlama

    plain = PlainLlama(model_path, 512, 2, extra_buffers=False)
    assert plain.llm.model_params.use_extra_bufts is False
    tokens = plain.llm.tokenize(b"The battery died after two days.")
    assert plain.decode_rate(tokens, 4, temp=0.0) > 0


def test_the_model_defaults_wrapper_sets_a_field_only_while_inside_and_refuses_an_unknown_one():
    llama_cpp = pytest.importorskip("llama_cpp.llama_cpp")
    from edgeqwen.engine.bindings import llama_model_defaults

    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    with llama_model_defaults(use_extra_bufts=False):
        assert llama_cpp.llama_model_default_params().use_extra_bufts is False
    assert llama_cpp.llama_model_default_params().use_extra_bufts is True
    with pytest.raises(AttributeError, match="no_such_field"), llama_model_defaults(no_such_field=1):
        llama_cpp.llama_model_default_params()
