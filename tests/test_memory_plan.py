"""The memory plan's arithmetic for repacked and mapped weights (no model file: a Qwen1.5-0.5B-shaped GGUFInfo)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeqwen import memory_plan, settings
from edgeqwen.board import Memory
from edgeqwen.errors import InputError
from edgeqwen.gguf_info import GGUFInfo, Weight
from edgeqwen.memory_plan import OVERHEAD_BYTES, MiB, estimate_bytes, kv_bytes_per_token, plan_memory
from edgeqwen.weight_memory import repacks, weight_memory

PI5_BUILD = {"NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "LLAMAFILE", "OPENMP", "REPACK"}
PI4_BUILD = {"NEON", "ARM_FMA", "LLAMAFILE", "OPENMP", "REPACK"}
X86_BUILD = {"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "LLAMAFILE", "OPENMP", "REPACK"}


def q_bytes(kind: str, row: int, rows: int) -> int:
    """Bytes of a quantized matrix: Q4_K 144 and Q6_K 210 bytes per 256 values, Q4_0 18 per 32."""
    per_block = {"Q4_K": (144, 256), "Q6_K": (210, 256), "Q4_0": (18, 32), "F32": (4, 1)}[kind]
    return row * rows // per_block[1] * per_block[0]


def qwen15(matrix_type: str = "Q4_K", embedding_type: str = "Q6_K", tied: bool = True) -> GGUFInfo:
    """Qwen1.5-0.5B's shape (no GQA, tied embeddings): 24 blocks of 1024 x 1024 attention and 1024 x 2816 MLP."""
    weights = [Weight("token_embd.weight", embedding_type, (1024, 151936), q_bytes(embedding_type, 1024, 151936))]
    for block in range(24):
        for name, shape in (("attn_q", (1024, 1024)), ("attn_k", (1024, 1024)), ("attn_v", (1024, 1024)),
                            ("attn_output", (1024, 1024)), ("ffn_gate", (1024, 2816)), ("ffn_up", (1024, 2816)),
                            ("ffn_down", (2816, 1024))):
            kind = "Q6_K" if matrix_type == "Q4_K" and name in ("attn_v",
                                                                "ffn_down") and block % 2 == 0 else matrix_type
            weights.append(Weight(f"blk.{block}.{name}.weight", kind, shape, q_bytes(kind, *shape)))
        for name in ("attn_norm", "ffn_norm", "attn_q_bias", "attn_k_bias", "attn_v_bias"):
            weights.append(Weight(f"blk.{block}.{name}", "F32", (1024,), 4096))
    weights.append(Weight("output_norm.weight", "F32", (1024,), 4096))
    return with_offsets(weights, tied)


def with_offsets(weights: list[Weight], tied: bool = True) -> GGUFInfo:
    """The tensors laid out in this order after 6 MiB of metadata and vocabulary (320 MB in all for Qwen1.5)."""
    offset, placed = 6 * MiB, []
    for w in weights:
        placed.append(Weight(w.name, w.type, w.shape, w.n_bytes, offset))
        offset += w.n_bytes
    weights, size = placed, offset
    return GGUFInfo(path=Path("qwen15.gguf"), file_size=size, architecture="qwen2", name=None, file_type="Q4_K_M",
                    context_length=32768, embedding_length=1024, block_count=24, head_count=16, head_count_kv=16,
                    vocab_size=151936, n_tensors=len(weights), n_params=0, has_chat_template=True, chat_template="x",
                    tied_embeddings=tied, weights=tuple(weights))


def board(mib: int) -> Memory:
    return Memory(total=mib << 20, available=mib << 20, cgroup_limit=None)


@pytest.fixture
def arm(monkeypatch):
    """Plan as on an ARM board (settings.REPACK on), with no repack or mmap setting in the environment."""
    monkeypatch.setattr(settings, "REPACK", True)
    monkeypatch.delenv(settings.ENV_REPACK, raising=False)
    monkeypatch.delenv(settings.ENV_MMAP, raising=False)


def test_which_matrices_each_build_repacks():
    q4k = Weight("blk.0.ffn_up.weight", "Q4_K", (1024, 2816), 0)
    q6k = Weight("token_embd.weight", "Q6_K", (1024, 151936), 0)
    q40 = Weight("blk.0.attn_q.weight", "Q4_0", (1024, 1020), 0)  # 1020 rows: a multiple of 4, not of 8
    assert repacks(q4k, PI5_BUILD) and repacks(q6k, PI5_BUILD) and repacks(q40, PI5_BUILD)
    assert not any(repacks(w, PI4_BUILD) for w in (q4k, q6k, q40))  # no dotprod: nothing is repacked
    assert repacks(q4k, X86_BUILD) and not repacks(q6k, X86_BUILD)  # x86: Q4_K but not Q6_K
    assert not repacks(q40, X86_BUILD)  # AVX2's Q4_0 layout takes rows in eights
    assert not repacks(q4k, PI5_BUILD - {"REPACK"})  # a build without the repack buffer
    assert not repacks(Weight("blk.0.attn_norm.weight", "F32", (1024,), 0), PI5_BUILD)


def test_mapped_and_repacked_weights_are_held_twice_and_unmapped_ones_once_with_the_tied_embedding_twice():
    info = qwen15()
    tensors = sum(w.n_bytes for w in info.weights)
    embedding = info.weights[0].n_bytes
    matrices = sum(w.n_bytes for w in info.weights if len(w.shape) == 2 and w.name != "token_embd.weight")
    both = weight_memory(info, PI5_BUILD, repack=True, mmap=True)
    assert (both.mapped, both.anonymous, both.loading_peak) == (tensors, matrices + embedding, 0)
    read = weight_memory(info, PI5_BUILD, repack=True, mmap=False)
    assert (read.mapped, read.anonymous, read.repacked) == (0, tensors + embedding, matrices + embedding)
    assert read.loading_peak == embedding  # the largest matrix passes through a read buffer of its size
    assert weight_memory(info, PI5_BUILD, repack=False, mmap=True).resident == tensors
    assert weight_memory(info, PI4_BUILD, repack=True, mmap=True).anonymous == 0
    untied = weight_memory(qwen15(tied=False), PI5_BUILD, repack=False, mmap=False)
    assert untied.anonymous == tensors
    # Tied but not repacked: one copy serves both the lookups and the output layer.
    assert weight_memory(info, PI5_BUILD, repack=False, mmap=False).anonymous == tensors


def test_a_repacked_matrix_outside_the_span_computed_in_place_is_unmapped():
    """The stand-in's layout: its own output matrix first in the file, then the embedding and the blocks. Its
    untied embedding is only looked up (a few rows a token), so its mapped pages are not counted."""
    output = Weight("output.weight", "Q8_0", (896, 151936), 144_643_072)
    embedding = Weight("token_embd.weight", "Q5_0", (896, 151936), 93_592_576)
    block = Weight("blk.0.ffn_up.weight", "Q5_0", (896, 4864), 2_996_224)
    info = with_offsets([output, embedding, block], tied=False)
    repacked = weight_memory(info, PI5_BUILD, repack=True, mmap=True)
    assert (repacked.mapped, repacked.anonymous) == (block.n_bytes, output.n_bytes)  # the embedding: rows looked up
    assert weight_memory(info, PI5_BUILD, repack=False, mmap=True).mapped == output.n_bytes + block.n_bytes


def test_the_estimate_is_the_weights_the_kv_cache_and_the_overhead():
    info = qwen15()
    tensors = sum(w.n_bytes for w in info.weights)
    assert estimate_bytes(info, 1024, "q8_0") == tensors + 1024 * kv_bytes_per_token(info, "q8_0") + OVERHEAD_BYTES
    weights = weight_memory(info, PI5_BUILD, repack=True, mmap=False)
    small_kv = estimate_bytes(info, 256, "q8_0", weights)
    # loading is the peak
    assert small_kv == weights.resident + weights.loading_peak + memory_plan.LOADING_OVERHEAD_BYTES


def test_a_1_gb_arm_board_gives_up_repacking_and_says_so(arm):
    plan = plan_memory(qwen15(), board(1024), build=PI5_BUILD)
    assert plan.fits and not plan.loading.repack and plan.loading.mmap
    assert (plan.kv_type, plan.n_ctx) == ("q8_0", 1024)
    assert "repacking" in plan.gave_up and "repacking off" in plan.describe() and "left out" in plan.describe()


def test_a_larger_arm_board_repacks_and_reads_the_file_instead_of_mapping_it(arm):
    plan = plan_memory(qwen15(), board(4096), build=PI5_BUILD)
    assert plan.loading.repack and not plan.loading.mmap and plan.gave_up is None
    assert (plan.kv_type, plan.n_ctx) == ("f16", 2048)
    mapped = plan_memory(qwen15(), board(4096), build=PI5_BUILD, mmap=True)
    assert mapped.estimate_bytes > plan.estimate_bytes  # mapped and repacked: the weights twice


def test_a_build_that_repacks_nothing_maps_the_file(arm):
    plan = plan_memory(qwen15(), board(1024), build=PI4_BUILD)
    assert plan.loading.mmap and plan.gave_up is None
    assert plan.estimate_bytes == estimate_bytes(qwen15(), plan.n_ctx, plan.kv_type)


def test_settings_from_the_environment_are_kept(arm, monkeypatch):
    monkeypatch.setenv(settings.ENV_REPACK, "on")
    monkeypatch.setenv(settings.ENV_MMAP, "on")
    plan = plan_memory(qwen15(), board(1024), build=PI5_BUILD)
    assert plan.loading.repack and plan.loading.mmap and not plan.fits and plan.gave_up is None
    monkeypatch.setenv(settings.ENV_REPACK, "off")
    monkeypatch.setenv(settings.ENV_MMAP, "off")
    plan = plan_memory(qwen15(), board(4096), build=PI5_BUILD)
    assert (plan.loading.repack, plan.loading.mmap) == (False, False)
    monkeypatch.setenv(settings.ENV_MMAP, "sometimes")
    with pytest.raises(InputError, match="EDGEQWEN_MMAP"):
        plan_memory(qwen15(), board(4096), build=PI5_BUILD)


def test_x86_maps_and_does_not_repack(monkeypatch):
    monkeypatch.setattr(settings, "REPACK", False)
    monkeypatch.delenv(settings.ENV_REPACK, raising=False)
    monkeypatch.delenv(settings.ENV_MMAP, raising=False)
    plan = plan_memory(qwen15(), board(1024), build=X86_BUILD)
    assert (plan.loading.repack, plan.loading.mmap, plan.gave_up) == (False, True, None)
    assert (plan.kv_type, plan.n_ctx) == ("q8_0", 1024)
    forced = plan_memory(qwen15(), board(8192), build=X86_BUILD, repack=True)
    assert forced.loading.repack and not forced.loading.mmap  # read: each repacked copy replaces its plain one
    mapped = plan_memory(qwen15(), board(8192), build=X86_BUILD, repack=True, mmap=True)
    assert mapped.estimate_bytes > forced.estimate_bytes  # mapped too: the repacked Q4_K matrices are held twice
