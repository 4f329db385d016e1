"""The engine: the only module that talks to llama.cpp (load, tokenize, evaluate, logits, sample).

It knows nothing of roles, YAML, the CLI or HTTP. It drives llama.cpp's model, context and
samplers itself, because it keeps more than one prompt in the KV cache: sequence 0 is the working
prompt, and each fixed prompt prefix a caller marks (a role's system prompt and examples) is kept
as its own sequence. A later prompt that starts with a kept prefix shares those cache cells
instead of evaluating them again, across role switches too.
"""

from __future__ import annotations

import codecs
import ctypes
import hashlib
import os
import platform
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp import _internals as internals  # model/context/batch/sampler wrappers of the pinned version
from llama_cpp._ctypes_extensions import load_shared_library
from llama_cpp._logger import set_verbose

from .errors import ContextOverflowError, EngineError, GrammarError, ModelFileError
from .grammar import check_grammar, grammar_literals
from .models import GGUFInfo, inspect_gguf, sha256_file
from .signals import held_signals

DEFAULT_N_CTX = 2048
# Measured on the Qwen1.5-0.5B-shaped Q4_K_M (x86, a 1,900-token prompt): n_batch 128 needs ~80 MB
# less than 512 at the same prompt speed.
DEFAULT_N_BATCH = 128
# llama.cpp's CPU weight repacking keeps a second copy of the weights: on x86 here it cost ~140 MB
# and made nothing faster. On ARM it is llama.cpp's NEON/dotprod fast path (unmeasured): left on.
DEFAULT_REPACK = platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
# Flash attention, measured on x86 with 2 threads (Qwen1.5-shaped Q4_K_M / stand-in): decode 62.5 vs
# 52.2 / 47.9 vs 46.2 tok/s with kept prefixes in the cache, a 500-token prompt 1.12 vs 1.42 s /
# 2.08 vs 2.35 s, short inputs the same; it also drops the attention-score matrix from the buffers.
DEFAULT_FLASH_ATTN = True
WORKING_SEQ = 0
MAX_KEPT_PREFIXES = 4
KV_TYPES = {"f16": 1, "q8_0": 8}  # ggml type ids of the KV cache
# Kept prefixes live in the same n_ctx cells as the working prompt (a long prompt evicts them), and
# hold at most this share of them.
PREFIX_SHARE = 0.5
# Kept prefixes also go to disk, so a new process skips evaluating them (the bulk of its first call).
PREFIX_FILES_KEPT = 32
PENALTY_WINDOW = 64  # recent tokens the repeat penalty applies to (llama.cpp's usual last_n)
_DECODE_NO_SLOT = 1  # llama_decode's return code when the KV cache has no room for the batch
# Stand-ins for message contents while rendering a chat template, so user text can be tokenized
# apart from the template and never becomes a control token (private-use code points).
_SENTINEL = "\ue000{}\ue001"
_SENTINEL_PATTERN = re.compile("\ue000(\\d+)\ue001")


def _ggml_accessors() -> ctypes.CDLL:
    """ggml's tensor accessors from the library llama-cpp-python built (our own handle and signatures)."""
    lib = load_shared_library("ggml-base", Path(llama.__file__).parent / "lib")
    for name, restype, argtypes in (
        ("ggml_get_name", ctypes.c_char_p, [ctypes.c_void_p]),
        ("ggml_nrows", ctypes.c_int64, [ctypes.c_void_p]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_tensor_get", None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]),
    ):
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


class _LayerTap:
    """Copies one transformer block's output (llama.cpp's graph tensor "l_out-N") while armed.

    Installed as the context's eval callback. llama.cpp asks it about every graph node; disarmed it
    answers no at once (measured: decode steps 0.4 % slower than with no callback), so llama.cpp
    runs the graph in one piece. Armed, llama.cpp stops after the asked node and hands over its
    data: one row of n_embd floats per token of the batch (only the last block is cut down to the
    output rows, so any earlier block holds every token).
    """

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.ggml = _ggml_accessors()
        self.rows: list[np.ndarray] = []
        self.callback = llama.ggml_backend_sched_eval_callback(self._on_node)  # kept alive with the tap

    def arm(self, layer: int) -> None:
        self.name, self.rows = f"l_out-{layer}".encode(), []

    def disarm(self) -> None:
        self.name = None

    def _on_node(self, tensor: int, ask: bool, _user_data: int) -> bool:
        if self.name is None or self.ggml.ggml_get_name(tensor) != self.name:
            return False
        if ask:
            return True
        n_rows, size = self.ggml.ggml_nrows(tensor), self.ggml.ggml_nbytes(tensor)
        data = np.empty(size // 4, dtype=np.float32)  # l_out is float32
        self.ggml.ggml_backend_tensor_get(tensor, data.ctypes.data, 0, size)
        self.rows.append(data.reshape(n_rows, -1))
        return True


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens when generating free text."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.0
    max_tokens: int = 256
    seed: int | None = None


def physical_cores() -> int:
    """Threads worth giving llama.cpp: one per physical core, and on big.LITTLE boards only the big cores."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    capacities = [_read_int(f"/sys/devices/system/cpu/cpu{cpu}/cpu_capacity") for cpu in usable]
    if all(c is not None for c in capacities) and len(set(capacities)) > 1:
        return capacities.count(max(capacities))  # e.g. RK3588: the four A76 cores, not the A55s
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return len(usable)
    cores = set(re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", text))  # x86: SMT siblings share one
    return max(1, min(len(usable), len(cores))) if cores else len(usable)


def default_prefix_cache_dir() -> Path:
    """Where kept prefixes are saved: $EDGEQWEN_CACHE, else $XDG_CACHE_HOME/edgeqwen, else ~/.cache/edgeqwen."""
    if os.environ.get("EDGEQWEN_CACHE"):
        return Path(os.environ["EDGEQWEN_CACHE"]) / "prefixes"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeqwen" / "prefixes"


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


class Engine:
    """One loaded GGUF model and one llama.cpp context.

    `n_ctx` is the longest prompt + reply the engine accepts, and the number of KV cells: kept
    prefixes use at most `prefix_budget` of them (default half) and are evicted, oldest first,
    when a prompt needs their room. With `prefix_cache_dir`, kept prefixes are also saved there
    and loaded instead of evaluated by later processes (a corrupt or foreign file is ignored).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        n_batch: int = DEFAULT_N_BATCH,
        prefix_budget: int | None = None,
        prefix_cache_dir: str | os.PathLike | None = None,
        use_mmap: bool = True,
        repack: bool = DEFAULT_REPACK,
        kv_type: str = "f16",
        flash_attn: bool = DEFAULT_FLASH_ATTN,
        verbose: bool = False,
    ) -> None:
        self.info: GGUFInfo = inspect_gguf(Path(model_path))  # raises before llama.cpp sees a bad file
        if not self.info.has_chat_template:
            raise ModelFileError(f"{model_path}: the GGUF has no chat template (tokenizer.chat_template); use an instruct/chat model")
        if n_ctx < 64:
            raise ValueError("n_ctx must be at least 64")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or physical_cores()
        self.n_batch = min(n_batch, n_ctx)
        self.prefix_budget = int(n_ctx * PREFIX_SHARE) if prefix_budget is None else min(prefix_budget, n_ctx)
        self.prefix_cache_dir = Path(prefix_cache_dir) if prefix_cache_dir is not None else None
        self.kv_type = kv_type
        self.verbose = verbose
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}")
        with held_signals():  # llama.cpp logs through a Python callback during the load
            self._load(str(model_path), use_mmap, repack, kv_type, flash_attn)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama.llama_model_n_embd(self._model.model)
        self.n_layer = llama.llama_model_n_layer(self._model.model)
        self._template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
            self.info.chat_template or ""
        )
        self.end_of_turn = frozenset(t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self._vocab, t))
        self._eos_text = self._piece(llama.llama_vocab_eos(self._vocab), special=True).decode("utf-8", "replace")
        self._working: list[int] = []  # tokens held by the working sequence
        self._kept: OrderedDict[tuple[int, ...], int] = OrderedDict()  # prefix -> sequence id, oldest first
        self.tokens_evaluated = 0  # new tokens evaluated by the last call: what it cost

    def _load(self, path: str, use_mmap: bool, repack: bool, kv_type: str, flash_attn: bool) -> None:
        set_verbose(self.verbose)  # llama.cpp's log goes nowhere unless asked for
        model_params = llama.llama_model_default_params()
        model_params.load_mode = llama.LLAMA_LOAD_MODE_MMAP if use_mmap else llama.LLAMA_LOAD_MODE_NONE
        model_params.use_extra_bufts = repack  # CPU weight repacking: faster matmuls, a second copy of the weights
        try:
            self._model = internals.LlamaModel(path_model=path, params=model_params, verbose=self.verbose)
        except ValueError:
            raise ModelFileError(f"{path}: llama.cpp could not load this model (run with --verbose to see why; `edgeqwen info {path}` shows what it holds)") from None
        self._vocab = self._model.vocab
        context_params = llama.llama_context_default_params()
        context_params.n_ctx = self.n_ctx
        context_params.n_batch = context_params.n_ubatch = self.n_batch
        context_params.n_threads = context_params.n_threads_batch = self.n_threads
        context_params.n_seq_max = MAX_KEPT_PREFIXES + 1
        context_params.kv_unified = True  # one cell pool: sequences can share a prefix's cells
        context_params.no_perf = True
        context_params.type_k = context_params.type_v = KV_TYPES[kv_type]
        # A quantized V cache needs flash attention in llama.cpp.
        use_flash = flash_attn or kv_type != "f16"
        context_params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED if use_flash else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._tap = _LayerTap()
        context_params.cb_eval = self._tap.callback
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=context_params, verbose=self.verbose)
        except ValueError:
            raise EngineError(
                f"llama.cpp could not create a context of {context_params.n_ctx} tokens, most likely out of memory: "
                "try a smaller --ctx or --kv-cache q8_0 (`edgeqwen doctor` estimates what fits)"
            ) from None
        self._flash = use_flash
        self._memory = llama.llama_get_memory(self._ctx.ctx)
        self._batch = internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=self.verbose)

    # -- text <-> tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Tokens of `text`; with special=False, markup like <|im_end|> stays plain text."""
        return self._model.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=special)

    def is_plain_text(self, text: str) -> bool:
        """True when `text` holds no control token of this model, even one llama.cpp matches in plain
        text (an added token such as Qwen2.5's <tool_call>)."""
        tokens = self.tokenize(text, special=True)
        return tokens == self.tokenize(text) and not self.info.special_tokens.intersection(tokens)

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in tokens).decode("utf-8", "replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            n = llama.llama_token_to_piece(self._vocab, token, buffer, size, 0, special)
            if n >= 0:
                return buffer.raw[:n]
            size = -n  # the piece needs a bigger buffer

    def chat_tokens(self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True) -> list[int]:
        """Tokens of `messages` in the model's own chat template.

        The template's markup is tokenized with control tokens, message contents without, so text a
        user types can never open or close a turn.
        """
        placeholders = [{**message, "content": _SENTINEL.format(i)} for i, message in enumerate(messages)]
        rendered = self._template.render(
            messages=placeholders, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=self._eos_text
        )
        pieces = _SENTINEL_PATTERN.split(rendered)
        if len(pieces) != 2 * len(messages) + 1:
            raise ModelFileError("the model's chat template rewrites message contents; edgeqwen cannot render it safely")
        tokens: list[int] = []
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                tokens += self.tokenize(piece, special=True)
            else:
                tokens += self.tokenize(messages[int(piece)]["content"])
        return tokens

    # -- evaluation -----------------------------------------------------------------------------

    def next_token_logits(self, tokens: Sequence[int], keep_prefix: int = 0) -> np.ndarray:
        """Logits for the token that follows `tokens` (a copy, shape [n_vocab]).

        keep_prefix: the length of a fixed prefix of `tokens` worth keeping in the cache.
        """
        self._evaluate(list(tokens), keep_prefix)
        return self._last_logits().copy()

    @property
    def readable_layers(self) -> range:
        """Blocks whose output layer_states can give: all but the last, which llama.cpp cuts down to
        the output rows (its output is the final state, read through the logits)."""
        return range(self.n_layer - 1)

    def layer_states(self, tokens: Sequence[int], layer: int, keep_prefix: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Next-token logits after `tokens`, and the output of transformer block `layer` (0-based, not
        the last block) for each token after the first `keep_prefix`: shape [len(tokens) - keep_prefix, n_embd].

        Those tokens are always evaluated afresh, so the states never depend on what ran before.
        """
        if layer not in self.readable_layers:
            raise ValueError(f"layer must be between 0 and {self.n_layer - 2} (the model has {self.n_layer} blocks; the last one is the final state)")
        if not 0 <= keep_prefix < len(tokens):
            raise ValueError("keep_prefix must leave at least one token to evaluate")
        self._truncate(min(len(self._working), keep_prefix))
        self._tap.arm(layer)
        try:
            self._evaluate(list(tokens), keep_prefix)
            states = np.concatenate(self._tap.rows)
        finally:
            self._tap.disarm()
        return self._last_logits().copy(), states[len(states) - (len(tokens) - keep_prefix):]

    def sequence_logprob(self, prefix: Sequence[int], continuation: Sequence[int], keep_prefix: int = 0) -> float:
        """log P(continuation | prefix), one evaluation per continuation token."""
        total = 0.0
        for i, token in enumerate(continuation):
            logits = self.next_token_logits([*prefix, *continuation[:i]], keep_prefix)
            total += float(logits[token] - _logsumexp(logits))
        return total

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx.ctx, -1), shape=(self.n_vocab,))

    def _evaluate(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Make the working sequence hold `tokens` and leave the last one's logits ready."""
        if not tokens:
            raise ValueError("nothing to evaluate")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens does not fit n_ctx {self.n_ctx}")
        reuse = common_prefix_length(self._working, tokens)
        kept = self._longest_kept_prefix(tokens)
        if keep_prefix > max(reuse, len(kept)) and self._load_prefix(tuple(tokens[:keep_prefix])):
            kept = tuple(tokens[:keep_prefix])
        if len(kept) > reuse:
            self._restore(kept)
            reuse = len(kept)
        reuse = min(reuse, len(tokens) - 1)  # the last token is evaluated again for its logits
        self._truncate(reuse)
        self._make_room(len(tokens))
        self._decode(tokens[reuse:], keep_prefix)
        self.tokens_evaluated = len(tokens) - reuse

    def _decode(self, tokens: list[int], keep_prefix: int = 0) -> None:
        """Evaluate `tokens` after the working sequence, keeping its first `keep_prefix` tokens once reached."""
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            self._batch.set_batch(chunk, n_past=len(self._working), logits_all=False)
            # The layer tap is Python that llama.cpp calls mid-decode: a Ctrl-C raised in it would be lost.
            with held_signals():
                while (code := llama.llama_decode(self._ctx.ctx, self._batch.batch)) == _DECODE_NO_SLOT and self._kept:
                    self._forget(next(iter(self._kept)))  # the working prompt needs the oldest kept prefix's cells
            if code != 0:
                raise EngineError(f"llama.cpp could not evaluate the prompt (llama_decode returned {code})")
            self._working += chunk
            if keep_prefix and len(self._working) >= keep_prefix:
                self._keep(keep_prefix)
                keep_prefix = 0

    def _truncate(self, length: int) -> None:
        # Also drops cells an interrupted decode left past the bookkept tokens.
        del self._working[length:]
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, length, -1)

    def _longest_kept_prefix(self, tokens: list[int]) -> tuple[int, ...]:
        best: tuple[int, ...] = ()
        for prefix in self._kept:
            if len(prefix) > len(best) and len(prefix) <= len(tokens) and tuple(tokens[: len(prefix)]) == prefix:
                best = prefix
        return best

    def _restore(self, prefix: tuple[int, ...]) -> None:
        """Point the working sequence at a kept prefix's cells: no evaluation, no copy."""
        self._working = []  # bookkeeping first: an interrupt here leaves a state _truncate repairs
        llama.llama_memory_seq_rm(self._memory, WORKING_SEQ, -1, -1)
        llama.llama_memory_seq_cp(self._memory, self._kept[prefix], WORKING_SEQ, -1, -1)
        self._kept.move_to_end(prefix)
        self._working = list(prefix)

    def _keep(self, length: int) -> None:
        prefix = tuple(self._working[:length])
        seq = self._free_sequence(prefix)
        if seq is None:
            return
        llama.llama_memory_seq_cp(self._memory, WORKING_SEQ, seq, 0, length)
        self._kept[prefix] = seq
        self._save_prefix(prefix, seq)

    def _free_sequence(self, prefix: tuple[int, ...]) -> int | None:
        """A cleared sequence id for `prefix`, evicting older kept prefixes; None if it should not be kept."""
        if prefix in self._kept or len(prefix) > self.prefix_budget:
            return None
        while self._kept and (len(self._kept) >= MAX_KEPT_PREFIXES or sum(map(len, self._kept)) + len(prefix) > self.prefix_budget):
            self._forget(next(iter(self._kept)))
        seq = min(set(range(1, MAX_KEPT_PREFIXES + 1)) - set(self._kept.values()))
        llama.llama_memory_seq_rm(self._memory, seq, -1, -1)  # cells an interrupted _keep may have left
        return seq

    def _make_room(self, length: int) -> None:
        """Evict kept prefixes, oldest first, until a working sequence of `length` tokens fits beside them."""
        while self._kept and length + self._cells_kept_apart() > self.n_ctx:
            self._forget(next(iter(self._kept)))

    def _cells_kept_apart(self) -> int:
        # Cells of kept prefixes, less the longest one the working sequence starts with (those it shares).
        shared = max((len(p) for p in self._kept if tuple(self._working[: len(p)]) == p), default=0)
        return sum(map(len, self._kept)) - shared

    def _forget(self, prefix: tuple[int, ...]) -> None:
        llama.llama_memory_seq_rm(self._memory, self._kept.pop(prefix), -1, -1)

    # -- kept prefixes on disk ------------------------------------------------------------------

    def _prefix_key(self, prefix: tuple[int, ...]) -> str:
        stat = os.stat(self.info.path)
        identity = [llama.__version__, os.path.realpath(self.info.path), stat.st_size, stat.st_mtime_ns, self.kv_type, self._flash]
        return hashlib.sha256(repr(identity).encode() + np.asarray(prefix, dtype="<i4").tobytes()).hexdigest()[:32]

    def _save_prefix(self, prefix: tuple[int, ...], seq: int) -> None:
        """Write a kept prefix's KV state to disk; a cache that cannot be written is skipped quietly.

        llama.cpp streams the state to the file layer by layer (no copy of it in memory); the file's
        name ends in its own hash, so a damaged or half-written file never matches.
        """
        if self.prefix_cache_dir is None:
            return
        key = self._prefix_key(prefix)
        tokens = (llama.llama_token * len(prefix))(*prefix)
        temporary = self.prefix_cache_dir / f".{key}.tmp{os.getpid()}"
        try:
            if any(self.prefix_cache_dir.glob(f"{key}-*.kv")):
                return
            self.prefix_cache_dir.mkdir(parents=True, exist_ok=True)
            if llama.llama_state_seq_save_file(self._ctx.ctx, str(temporary).encode(), seq, tokens, len(prefix)) == 0:
                raise OSError("llama.cpp could not write the state")
            os.replace(temporary, self.prefix_cache_dir / f"{key}-{_file_digest(temporary)}.kv")
            _prune(self.prefix_cache_dir, PREFIX_FILES_KEPT)
        except OSError:
            with suppress(OSError):
                temporary.unlink(missing_ok=True)

    def _load_prefix(self, prefix: tuple[int, ...]) -> bool:
        """Load a saved prefix into a kept sequence; False when there is none or it does not check out."""
        if self.prefix_cache_dir is None or len(prefix) > self.prefix_budget:
            return False
        key = self._prefix_key(prefix)
        try:
            # Only a file whose bytes match the hash in its name reaches llama.cpp.
            path = next(f for f in self.prefix_cache_dir.glob(f"{key}-*.kv") if f.stem.split("-", 1)[1] == _file_digest(f))
        except (OSError, StopIteration):
            return False
        seq = self._free_sequence(prefix)
        if seq is None:
            return False
        tokens = (llama.llama_token * len(prefix))()
        count = ctypes.c_size_t(0)
        loaded = llama.llama_state_seq_load_file(self._ctx.ctx, str(path).encode(), seq, tokens, len(prefix), ctypes.byref(count))
        if loaded == 0 or tuple(tokens[: count.value]) != prefix:
            llama.llama_memory_seq_rm(self._memory, seq, -1, -1)
            return False
        self._kept[prefix] = seq
        os.utime(path)  # recently used files survive pruning
        return True

    # -- generation -----------------------------------------------------------------------------

    def stream(self, tokens: Sequence[int], sampling: SamplingParams, keep_prefix: int = 0) -> Iterator[str]:
        """Sample a continuation of `tokens`, yielding text as it decodes; stops at end of turn."""
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        if budget <= 0:
            raise ContextOverflowError(f"prompt of {len(tokens)} tokens leaves no room in n_ctx {self.n_ctx}")
        sampler = self._sampler(sampling)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._evaluate(list(tokens), keep_prefix)
        self._make_room(len(tokens) + budget)
        for count in range(1, budget + 1):
            token = sampler.sample(self._ctx, -1)  # also feeds the token to the sampler's state
            if token in self.end_of_turn:
                break
            text = decoder.decode(self._piece(token))
            if text:
                yield text
            if count < budget:
                self._decode([token])
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _sampler(self, sampling: SamplingParams, grammar: str | None = None):
        sampler = internals.LlamaSampler()
        if grammar is not None:
            sampler.add_grammar(self._model, _Grammar(grammar))
        greedy = sampling.temperature <= 0
        if sampling.repeat_penalty != 1.0:
            # The penalty only lowers the logits of the last PENALTY_WINDOW tokens, so the k best after
            # it are among the k + PENALTY_WINDOW best before: cutting to those first gives the same
            # choice without the penalty sampler scanning the whole vocabulary for every token.
            if greedy or sampling.top_k > 0:
                sampler.add_top_k((1 if greedy else sampling.top_k) + PENALTY_WINDOW)
            sampler.add_penalties(self.n_vocab, PENALTY_WINDOW, sampling.repeat_penalty, 0.0, 0.0)
        if greedy:
            sampler.add_greedy()
            return sampler
        seed = sampling.seed if sampling.seed is not None else llama.LLAMA_DEFAULT_SEED
        if sampling.top_k > 0:
            sampler.add_top_k(sampling.top_k)
        sampler.add_top_p(sampling.top_p, 1)
        sampler.add_temp(sampling.temperature)
        sampler.add_dist(seed)
        return sampler

    def constrained_choice(self, tokens: Sequence[int], grammar: str, max_tokens: int = 32, keep_prefix: int = 0) -> str:
        """Greedy decoding under a label grammar; returns the literal the model produced."""
        check_grammar(grammar)
        for literal in grammar_literals(grammar):
            if not self.is_plain_text(literal):
                raise GrammarError(f"grammar rejected: literal {literal!r} contains a control token of this model")
        sampler = self._sampler(SamplingParams(temperature=0.0), grammar=grammar)
        self._evaluate(list(tokens), keep_prefix)
        produced: list[int] = []
        while len(produced) < max_tokens:
            token = sampler.sample(self._ctx, -1)
            if token in self.end_of_turn:
                break
            produced.append(token)
            self._decode([token])
        return self.detokenize(produced)


@dataclass(frozen=True)
class _Grammar:
    """What llama-cpp-python's sampler wrapper reads from a grammar: its text and root rule."""

    _grammar: str
    _root: str = "root"


def _file_digest(path: Path) -> str:
    return sha256_file(path)[:16]  # enough to tell a damaged file from the one written


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the `keep` most recently used prefix files."""
    files = sorted(directory.glob("*.kv"), key=lambda f: f.stat().st_mtime, reverse=True)
    for stale in files[keep:]:
        stale.unlink(missing_ok=True)


def common_prefix_length(cached: Sequence[int], tokens: Sequence[int]) -> int:
    """How many leading tokens two token lists share."""
    n = min(len(cached), len(tokens))
    if n == 0:
        return 0
    differs = np.flatnonzero(np.asarray(cached[:n]) != np.asarray(tokens[:n]))
    return int(differs[0]) if differs.size else n


def _logsumexp(values: np.ndarray) -> float:
    peak = float(values.max())
    return peak + float(np.log(np.exp(values - peak).sum()))
