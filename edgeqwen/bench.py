"""The speed and memory benchmark behind `edgeqwen bench`: prints a table, returns figures for JSON.

Every figure is measured in the same run as its reference, so ratios stay meaningful on a noisy
machine: the compute floor (evaluating only an input's own tokens after a warm prefix) and plain
llama-cpp-python (the naive grammar call, raw greedy decode) run on the same model and threads.
The reference is tried in a child process first (reference_loading): where llama.cpp's default loading
kills the process, it runs with extra buffer types off, and where nothing runs, its rows are not measured.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import settings

SHORT_INPUTS = [
    "The battery died after two days.",
    "Best pizza in town, friendly staff.",
    "物流很快，包装完好。",
    "房间太小了，隔音也很差。",
    "I would not recommend this hotel to anyone.",
    "这本书让我受益匪浅。",
    "Absolutely loved the soundtrack.",
    "客服态度恶劣，再也不买了。",
    "Works exactly as described, great value.",
    "屏幕很清晰，运行速度也快。",
    "The sequel is a tired copy of the original.",
    "味道一般，价格偏贵。",
]
LONG_INPUTS = [
    "We stayed four nights. The location is convenient, a short walk from the station and the old town, "
    "but the room was tiny, the air conditioning rattled all night, the shower drained slowly and the "
    "breakfast was the same cold buffet every morning. Staff were polite but could not fix anything.",
    "这台笔记本电脑外观很漂亮，重量也轻，适合出差携带。屏幕色彩准确，"
    "键盘手感不错，电池续航大概八个小时，基本能满足一天的办公需求。"
    "唯一的缺点是风扇在高负载时声音有点大，不过整体来说非常满意，推荐购买。",
    "I went in with low expectations, but the film surprised me: the performances are subtle, the script "
    "trusts its audience, and the final twenty minutes are some of the most moving I have seen this year. "
    "It is slow in places, yet every scene earns its place.",
    "酒店前台办理入住等了四十分钟，房间里有烟味，床单上还有污渍。"
    "打电话给客房服务，半个小时都没人来。早餐种类很少，咖啡是凉的。"
    "价格却一点都不便宜，非常失望，不会再来了。",
]
CHAT_PROMPT = "Give me three tips for staying focused while studying."
# Four replies that each run their whole budget on the stand-in (greedy), so every step decodes four.
TOGETHER_PROMPTS = [CHAT_PROMPT, "Name three rivers in Europe and one fact about each.",
                    "请详细介绍一下长城的历史。", "How do I boil an egg so the yolk stays soft?"]
# Structured output: the same prompt answered under the schema's grammar and free (same sampling), so the
# ratio is what the grammar costs per token.
STRUCTURED_PROMPT = "Invent a person and describe them: name, age, city, three hobbies and a two-sentence biography."
STRUCTURED_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 5}, "biography": {"type": "string"},
    },
    "required": ["name", "age", "city", "hobbies", "biography"],
    "additionalProperties": False,
}
STRUCTURED_TOKENS = 96
NAIVE_PROMPT = "Analyze the sentiment of the following text and answer Positive or Negative.\nText: {text}\nSentiment:"
DECODE_TOKENS = 64
BATCH_ROUNDS = 4  # the short inputs, this many times over, classified one at a time and together
PROBE_TIMEOUT_S = 600.0  # loading the reference and a few tokens, on a busy machine
NOT_MEASURED = "not measured (see reference_loading)"


@dataclass(frozen=True)
class ReferenceLoading:
    """How bench loads plain llama-cpp-python: llama.cpp's extra buffer types on (its default) or off, or
    not at all (None) when neither way ran here; `description` says which and why, for the table and JSON."""

    extra_buffers: bool | None
    description: str


def reference_probe_command(model: Path, n_ctx: int, threads: int, extra_buffers: bool) -> list[str]:
    """The child process that loads the reference and runs a few tokens (engine/plain.py's probe)."""
    return [sys.executable, "-m", "edgeqwen.engine.plain", str(model), str(n_ctx), str(threads),
            *([] if extra_buffers else ["--no-extra-buffers"])]


def child_failure(command: list[str], timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the child process `command` failed, in a few words ("SIGILL: Illegal instruction"); None if it exited 0."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"no result in {timeout:.0f} s"
    if done.returncode == 0:
        return None
    if done.returncode < 0:
        number = -done.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        return f"{name}: {signal.strsignal(number) or 'no description'}"
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return f"exit status {done.returncode}" + (f", {last}" if last else "")


def choose_reference_loading(failure: Callable[[bool], str | None], plan_repacks: bool,
                             log: Callable[[str], None] = print) -> ReferenceLoading:
    """Llama.cpp's default loading if the probe `failure(extra_buffers=True)` succeeds; else extra buffer types
    off if that probe does; else none. Logs one line whenever it departs from the default."""
    default_failure = failure(True)
    if default_failure is None:
        return ReferenceLoading(True, "llama-cpp-python's defaults (llama.cpp's extra buffer types on)")
    fallback_failure = failure(False)
    if fallback_failure is None:
        plan = "" if plan_repacks else ", as edgeqwen's plan does on this board"
        log(f"plain llama-cpp-python with its default loading died here ({default_failure}); the reference runs "
            f"with llama.cpp's extra buffer types off{plan}")
        return ReferenceLoading(False, f"extra buffer types off: the default loading died here ({default_failure})")
    log(f"plain llama-cpp-python could not run here (default loading: {default_failure}; extra buffer types off: "
        f"{fallback_failure}); its reference rows are not measured, edgeqwen's own are")
    return ReferenceLoading(None, f"none: the default loading ({default_failure}) and extra buffer types off "
                                  f"({fallback_failure}) both failed here")


class _NoReference:
    """Stands in for plain llama-cpp-python where it cannot run: every measurement is None (not measured)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def _median(values: list[float | None]) -> float | None:
    return None if None in values else statistics.median(values)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ratio(numerator: float | None, denominator: float | None, digits: int) -> float | None:
    return None if numerator is None or denominator is None else round(numerator / denominator, digits)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _start_streams(eq, prompts: list[str], max_tokens: int):
    """Chat slots answering `prompts` (greedy), their prompts not evaluated yet."""
    streams = eq.chat_streams(len(prompts))
    for text in prompts:
        conversation = eq.conversation()
        conversation.role = _greedy(conversation.role, max_tokens)
        streams.start(conversation, conversation.prepare(text))
    return streams


def _streams_rate(eq, prompts: list[str], max_tokens: int) -> float:
    """Tokens per second, all replies together, of `prompts` answered at once in chat slots (greedy,
    the clock started once every prompt is evaluated and its first token out): what a server's
    concurrent chats get."""
    streams = _start_streams(eq, prompts, max_tokens)
    produced = -len(prompts)  # the first tokens, out before the clock starts
    while len(streams.step()) < len(prompts):
        pass
    started = time.perf_counter()
    while streams.active:
        produced += sum(piece.generation.tokens for piece in streams.step().values() if piece.generation is not None)
    return produced / (time.perf_counter() - started)


def _first_tokens_together(eq, prompts: list[str]) -> float:
    """Seconds from `prompts` arriving at once in chat slots to every one's first token."""
    started = time.perf_counter()
    streams = _start_streams(eq, prompts, 1)
    while streams.active:
        streams.step()
    return time.perf_counter() - started


def _decode_rate(conversation, text: str) -> float:
    """Tokens per second of one reply after its first token."""
    conversation.reset()
    conversation.reply(text)
    timings = conversation.timings
    first = timings["first_token_ms"] / 1000
    return (timings["reply_tokens"] - 1) / max(1e-9, timings["total_ms"] / 1000 - first)


def structured_rates(eq, rounds: int = 3) -> dict:
    """Decode tok/s of STRUCTURED_PROMPT under its schema's grammar and free, on the same prompt tokens and
    sampling (greedy, no penalties), taking turns; and how many tokens per reply the whole grammar was applied to."""
    plain = {"temperature": 0.0, "repeat_penalty": 1.0, "dry_multiplier": 0.0, "max_tokens": STRUCTURED_TOKENS}
    constrained = eq.conversation(sampling=plain, schema=STRUCTURED_SCHEMA)
    free = eq.conversation(constrained.role)  # the same system prompt (it shows the schema), no grammar
    structured_tps, free_tps, resampled = [], [], []
    for _ in range(rounds):
        structured_tps.append(_decode_rate(constrained, STRUCTURED_PROMPT))
        resampled.append(constrained.timings["grammar_resampled"])
        free_tps.append(_decode_rate(free, STRUCTURED_PROMPT))
    return {"structured": statistics.median(structured_tps), "free": statistics.median(free_tps),
            "resampled": statistics.median(resampled), "tokens": constrained.timings["reply_tokens"]}


def _greedy(role, max_tokens: int):
    return role.model_copy(update={"sampling": role.sampling.model_copy(update={"temperature": 0.0,
                                                                                "max_tokens": max_tokens})})


def _rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _first_result_subprocess(model: Path, threads: int, n_ctx: int, cache_dir: Path) -> dict:
    """Process start → first sentiment, then a chat turn; peak RSS of a process running both roles."""
    code = (
        "import time,resource,json\n"
        "from edgeqwen import EdgeQwen\n"
        f"eq=EdgeQwen({str(model)!r},threads={threads},n_ctx={n_ctx})\n"
        "eq.sentiment('The battery died after two days.');first=time.time()\n"
        f"eq.chat({CHAT_PROMPT!r})\n"
        "print(json.dumps({'first':first,'rss':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))\n"
    )
    started = time.time()
    env = {**os.environ, settings.ENV_CACHE: str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    inner = json.loads(out.strip().splitlines()[-1])
    return {"first_s": round(inner["first"] - started, 3), "rss_mb": round(inner["rss"], 1)}


def _reference_calls(raw, role) -> tuple[list[float], list[float], list[float]]:
    """Seconds of plain llama-cpp-python's classification calls: the naive grammar call, the role's own prompt
    through create_chat_completion, and the same right after a chat turn."""
    naive = [_timed(lambda: raw.grammar_completion(NAIVE_PROMPT.format(text=text), ("Positive", "Negative")))
             for text in SHORT_INPUTS]
    labels = role.label_names
    same_prompt = [_timed(lambda: raw.chat_completion(role.messages(text), labels)) for text in SHORT_INPUTS]
    chat_messages = [{"role": "user", "content": "Say hello in five words."}]
    after_chat = []
    for text in SHORT_INPUTS[:4]:
        raw.chat_completion(chat_messages, max_tokens=8)  # another role ran in between
        after_chat.append(_timed(lambda: raw.chat_completion(role.messages(text), labels)))
    return naive, same_prompt, after_chat


def run_benchmark(model: Path, threads: int | None = None, n_ctx: int | None = None, repeats: int = 1,
                  log: Callable[[str], None] = print) -> dict:
    """Measure edgeqwen and plain llama-cpp-python on one model; returns the figures."""
    from .api import EdgeQwen
    from .board import physical_cores
    from .engine.plain import PlainLlama

    threads = threads or physical_cores()
    figures: dict = {"model": str(model), "threads": threads, "n_ctx": n_ctx}

    log("process start → first result, peak RSS (two subprocesses: no saved prefixes, then saved)…")
    with tempfile.TemporaryDirectory(prefix="edgeqwen-bench-cache-") as cache_dir:
        unsaved = _first_result_subprocess(model, threads, n_ctx, Path(cache_dir))
        saved = _first_result_subprocess(model, threads, n_ctx, Path(cache_dir))
    figures.update({
        "process_to_first_sentiment_s": saved["first_s"],
        "process_to_first_sentiment_no_saved_prefix_s": unsaved["first_s"],
        "peak_rss_both_roles_mb": max(saved["rss_mb"], unsaved["rss_mb"]),
    })

    log("loading…")
    started = time.perf_counter()
    eq = EdgeQwen(model, threads=threads, n_ctx=n_ctx)
    figures["load_s"] = round(time.perf_counter() - started, 3)
    figures.update(n_ctx=eq.n_ctx, kv_cache=eq.memory_plan.kv_type, memory_plan=eq.memory_plan.describe())
    log("plain llama-cpp-python, loaded and run in a child process first…")
    loading = choose_reference_loading(
        lambda extra_buffers: child_failure(reference_probe_command(model, eq.n_ctx, threads, extra_buffers)),
        eq.memory_plan.loading.repack, log)
    figures["reference_loading"] = loading.description
    raw = (_NoReference() if loading.extra_buffers is None
           else PlainLlama(model, eq.n_ctx, threads, extra_buffers=loading.extra_buffers))

    log("compute floor and sentiment latency…")
    role = eq.roles["sentiment"]
    prefix = eq.prompt_tokens(role)  # system, examples and the user turn up to the input
    floor, warm, after_chat, cold = [], [], [], []
    for text in SHORT_INPUTS * repeats:
        full = eq.prompt_tokens(role, text)
        floor.append(raw.eval_seconds(prefix, full[len(prefix):]))
        eq.sentiment("warm up the role")  # role's prefix is the last thing evaluated
        warm.append(_timed(lambda: eq.sentiment(text)))
        eq.route(text)  # another role ran in between
        cold.append(_timed(lambda: eq.sentiment(text)))
    conversation = eq.conversation()
    for text in SHORT_INPUTS[:4]:
        conversation.reset()
        conversation.reply("Say hello in five words.")
        after_chat.append(_timed(lambda: eq.sentiment(text)))
    long_times = [_timed(lambda: eq.sentiment(text)) for text in LONG_INPUTS]
    route_times = [_timed(lambda: eq.route(text)) for text in SHORT_INPUTS]
    # route, and label a review
    auto_times = [_timed(lambda: eq.run(text, "auto", chat=False)) for text in SHORT_INPUTS]
    route_role = eq.router.prompt  # the prompt the router reads texts through
    route_prefix = eq.prompt_tokens(route_role)
    route_floor = [raw.eval_seconds(route_prefix, eq.prompt_tokens(route_role, text)[len(route_prefix):])
                   for text in SHORT_INPUTS]

    log("texts one at a time and together…")
    many_texts = SHORT_INPUTS * BATCH_ROUNDS
    one_at_a_time = _timed(lambda: [eq.sentiment(text) for text in many_texts])
    together = _timed(lambda: eq.classify_many(many_texts))

    log("plain llama-cpp-python references…")
    naive, same_prompt, same_prompt_after_chat = (_reference_calls(raw, role) if loading.extra_buffers is not None
                                                  else ([None], [None], [None]))

    log("chat and raw decode…")
    chat = eq.conversation()
    chat.role = _greedy(chat.role, DECODE_TOKENS)
    prompt = eq.prompt_tokens(chat.role, CHAT_PROMPT)
    penalty = chat.role.sampling.repeat_penalty
    ttfts, ours_tps, raw_tps, raw_same_tps, bare_tps = [], [], [], [], []
    for _ in range(3):  # interleaved, so drifts in machine load hit all three alike
        chat.reset()
        chat.reply(CHAT_PROMPT)
        ttft = chat.timings["first_token_ms"] / 1000
        ttfts.append(ttft)
        ours_tps.append((chat.timings["reply_tokens"] - 1) / max(1e-9, chat.timings["total_ms"] / 1000 - ttft))
        raw_tps.append(raw.decode_rate(prompt, DECODE_TOKENS, temp=0.0))
        raw_same_tps.append(raw.decode_rate(prompt, DECODE_TOKENS, temp=0.0, repeat_penalty=penalty))
        bare_tps.append(eq.bare_decode_rate(prompt, DECODE_TOKENS - 1))
    log("structured output (a JSON schema's grammar) beside free decode on the same prompt…")
    structured = structured_rates(eq)
    structured_role = eq.conversation(schema=STRUCTURED_SCHEMA).role  # the schema shown in its system prompt
    structured_prompt = eq.prompt_tokens(structured_role, STRUCTURED_PROMPT)
    raw_structured_tps = raw.json_schema_decode_rate(structured_prompt, STRUCTURED_TOKENS, STRUCTURED_SCHEMA)
    log("chat replies together in slots…")
    alone = statistics.median(_streams_rate(eq, [CHAT_PROMPT], DECODE_TOKENS) for _ in range(2))
    together_tps = statistics.median(_streams_rate(eq, TOGETHER_PROMPTS, DECODE_TOKENS) for _ in range(2))
    bare_together = len(TOGETHER_PROMPTS)  # as many streams in a bare decode loop: what this machine allows
    bare_alone_tps, bare_together_tps = [], []
    for _ in range(2):  # taking turns, so a drift in machine load hits both alike
        bare_alone_tps.append(eq.bare_decode_rate(prompt, DECODE_TOKENS - 1))
        bare_together_tps.append(eq.bare_decode_rate(prompt, DECODE_TOKENS - 1, streams=bare_together))
    first_tokens_together = statistics.median(_first_tokens_together(eq, TOGETHER_PROMPTS) for _ in range(3))
    decode_tps, raw_tps_p50, raw_same_p50, bare_p50, bare_alone_p50, bare_together_p50 = (
        _median(x) for x in (ours_tps, raw_tps, raw_same_tps, bare_tps, bare_alone_tps, bare_together_tps))

    floor_p50, route_floor_p50 = _median(floor), _median(route_floor)
    naive_p50, same_prompt_p50, same_after_chat_p50 = (_median(x) for x in (naive, same_prompt, same_prompt_after_chat))
    figures.update({
        "floor_p50_ms": _ms(floor_p50),
        "sentiment_short_warm_p50_ms": _ms(statistics.median(warm)),
        "sentiment_short_warm_p90_ms": _p([_ms(t) for t in warm], 0.9),
        "sentiment_short_cold_role_p50_ms": _ms(statistics.median(cold)),
        "sentiment_short_cold_role_p90_ms": _p([_ms(t) for t in cold], 0.9),
        "sentiment_after_chat_p50_ms": _ms(statistics.median(after_chat)),
        "sentiment_long_p50_ms": _ms(statistics.median(long_times)),
        "sentiment_long_p90_ms": _p([_ms(t) for t in long_times], 0.9),
        "router_p50_ms": _ms(statistics.median(route_times)),
        "router_floor_p50_ms": _ms(route_floor_p50),
        "auto_route_and_label_p50_ms": _ms(statistics.median(auto_times)),
        "sentiment_one_at_a_time_texts_s": round(len(many_texts) / one_at_a_time, 2),
        "sentiment_together_texts_s": round(len(many_texts) / together, 2),
        "naive_grammar_call_p50_ms": _ms(naive_p50),
        "own_prompt_chat_completion_grammar_p50_ms": _ms(same_prompt_p50),
        "own_prompt_chat_completion_grammar_after_chat_p50_ms": _ms(same_after_chat_p50),
        "chat_first_token_ms": _ms(statistics.median(ttfts)),
        "chat_decode_tok_s": round(decode_tps, 1), "raw_decode_tok_s": _rounded(raw_tps_p50, 1),
        f"raw_decode_repeat_penalty_{penalty}_tok_s": _rounded(raw_same_p50, 1),
        "bare_llama_decode_same_context_tok_s": round(bare_p50, 1),
        "structured_json_schema_decode_tok_s": round(structured["structured"], 1),
        "structured_same_prompt_free_decode_tok_s": round(structured["free"], 1),
        "structured_reply_tokens": structured["tokens"],
        "structured_grammar_applied_in_full_tokens_per_reply": structured["resampled"],
        "raw_json_schema_grammar_decode_tok_s": _rounded(raw_structured_tps, 1),
        "chat_slots_1_reply_tok_s": round(alone, 1),
        f"chat_slots_{len(TOGETHER_PROMPTS)}_replies_together_tok_s": round(together_tps, 1),
        f"chat_slots_{len(TOGETHER_PROMPTS)}_arriving_together_first_tokens_ms": _ms(first_tokens_together),
        f"bare_llama_decode_{bare_together}_streams_tok_s": round(bare_together_p50, 1),
        "bench_process_peak_rss_mb": _rss_mb(),
    })
    figures["ratios"] = {
        "cold_role_p50_over_floor": _ratio(statistics.median(cold), floor_p50, 2),
        "warm_p50_over_floor": _ratio(statistics.median(warm), floor_p50, 2),
        "after_chat_p50_over_floor": _ratio(statistics.median(after_chat), floor_p50, 2),
        "router_p50_over_its_floor": _ratio(statistics.median(route_times), route_floor_p50, 2),
        "auto_over_router_plus_sentiment": round(
            statistics.median(auto_times) / (statistics.median(route_times) + statistics.median(warm)), 2),
        "together_over_one_at_a_time": round(one_at_a_time / together, 2),
        "naive_over_cold_role": _ratio(naive_p50, statistics.median(cold), 2),
        "own_prompt_chat_completion_over_cold_role": _ratio(same_prompt_p50, statistics.median(cold), 2),
        "own_prompt_chat_completion_after_chat_over_ours_after_chat": _ratio(
            same_after_chat_p50, statistics.median(after_chat), 2),
        "chat_decode_over_raw": _ratio(decode_tps, raw_tps_p50, 3),
        "chat_decode_over_raw_same_penalty": _ratio(decode_tps, raw_same_p50, 3),
        "chat_decode_over_bare_llama_decode": round(decode_tps / bare_p50, 3),
        "structured_decode_over_free_same_prompt": round(structured["structured"] / structured["free"], 3),
        "raw_json_schema_grammar_decode_over_structured": _ratio(raw_structured_tps, structured["structured"], 3),
        f"chat_slots_{len(TOGETHER_PROMPTS)}_together_over_1": round(together_tps / alone, 2),
        f"bare_llama_decode_{bare_together}_streams_over_1": round(bare_together_p50 / bare_alone_p50, 2),
    }
    return figures


def format_table(figures: dict) -> str:
    """The figures, one row each (None: a reference row not measured here), the ratios last."""
    rows = [(key, value) for key, value in figures.items() if key != "ratios"]
    rows += [(f"ratio: {key}", value) for key, value in figures.get("ratios", {}).items()]
    rows = [(key, NOT_MEASURED if value is None else value) for key, value in rows]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"| {key:<{width}} | {value} |" for key, value in rows)
