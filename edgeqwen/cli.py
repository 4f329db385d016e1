"""The `edgeqwen` command: parses arguments, calls the Python API, prints. No logic of its own."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from .api import TASKS, EdgeQwen, RunResult
from .engine import DEFAULT_N_CTX
from .errors import EdgeQwenError, InputError
from .models import inspect_gguf
from .roles import load_roles
from .router import STRATEGIES

app = typer.Typer(
    help="One small Qwen model (4-bit GGUF via llama.cpp) for sentiment analysis and chat on CPU-only devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

INTERACTIVE_HELP = """commands: /task auto|sentiment|chat|both   /reset (forget the conversation)   /help   /quit (or Ctrl-D)
Ctrl-C stops a reply that is streaming."""

ModelOption = Annotated[Optional[Path], typer.Option("--model", "-m", help="GGUF file. Default: $EDGEQWEN_MODEL, then the model in models/.")]
PromptsOption = Annotated[Optional[Path], typer.Option("--prompts", help="Directory of role YAML files; adds to and overrides the shipped roles.")]


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def _status(message: str) -> None:
    """Progress for people: on stderr, and only when someone is watching."""
    if sys.stderr.isatty():
        typer.echo(message, err=True)


@app.command()
def run(
    text: Annotated[Optional[str], typer.Argument(help="Text to process; '-' reads one input per line from stdin; omit for an interactive session.")] = None,
    task: Annotated[str, typer.Option("--task", "-t", help="auto: route each input; sentiment; chat; both: sentiment then chat.")] = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per input: task, label, confidence, reply, timings.")] = False,
    model: ModelOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens (KV cache memory grows with it).")] = DEFAULT_N_CTX,
    prompts: PromptsOption = None,
    router: Annotated[str, typer.Option("--router", help="How --task auto decides: llm (the route role) or rules (keyword + length, for comparison).")] = "llm",
    kv_cache: Annotated[str, typer.Option("--kv-cache", help="f16, or q8_0: about half the KV-cache memory (1 GB boards), slower on long prompts.")] = "f16",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log and timings.")] = False,
) -> None:
    """Answer with the right role: sentiment label or a streamed chat reply.

    \b
    Examples:
      edgeqwen run "这家餐厅的服务太差了"
      edgeqwen run --task chat "What can you do?"
      printf 'Great phone!\\nHow do I reset it?\\n' | edgeqwen run - --json
      edgeqwen run            # interactive session
    """
    if task not in TASKS:
        _fail(InputError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}"))
    if router not in STRATEGIES:
        _fail(InputError(f"unknown --router {router!r}; choose one of {', '.join(STRATEGIES)}"))
    if kv_cache not in ("f16", "q8_0"):
        _fail(InputError(f"unknown --kv-cache {kv_cache!r}; choose f16 or q8_0"))
    if text is not None and text != "-" and not text.strip():
        _fail(InputError("empty input: give some text to analyse"))
    interactive = text is None and sys.stdin.isatty()
    try:
        _status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router=router, kv_cache=kv_cache, verbose=verbose)
        if interactive:
            _interactive(eq, task, json_output)
        elif text is None or text == "-":
            _batch(eq, _stdin_lines(), task, json_output, verbose)
        else:
            _answer(eq, text, task, json_output, verbose)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130)


def _stdin_lines() -> Iterator[str]:
    # Invalid UTF-8 becomes U+FFFD instead of a UnicodeDecodeError traceback.
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
    for line in stream:
        yield line.rstrip("\r\n")


def _batch(eq: EdgeQwen, lines: Iterator[str], task: str, json_output: bool, verbose: bool) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            typer.echo(f"warning: line {number}: empty, skipped", err=True)
            continue
        if not json_output:
            typer.echo(f"> {line}")
        try:
            _answer(eq, line, task, json_output, verbose)
        except InputError as error:
            typer.echo(f"error: line {number}: {error}", err=True)


def _answer(eq: EdgeQwen, text: str, task: str, json_output: bool, verbose: bool, conversation=None) -> RunResult:
    stream = None if json_output else _print_piece
    result = eq.run(text, task, conversation=conversation, on_text=stream)
    if json_output:
        typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        return result
    if result.reply is not None:
        typer.echo()
    if result.sentiment is not None:
        _print_sentiment(result)
    if result.sentiment is not None and result.sentiment.truncated:
        typer.echo("warning: input truncated to fit the context window (--ctx)", err=True)
    if verbose:
        route = f"route={result.route.task} ({result.route.strategy}) " if result.route else ""
        typer.echo(f"[{route}timings {result.timings}]", err=True)
    return result


def _print_piece(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


def _print_sentiment(result: RunResult) -> None:
    s = result.sentiment
    typer.echo(f"sentiment: {s.display} (confidence {s.confidence:.2f})")


def _interactive(eq: EdgeQwen, task: str, json_output: bool) -> None:
    conversation = eq.conversation()
    typer.echo(f"edgeqwen: task {task}. {INTERACTIVE_HELP}", err=True)
    while True:
        try:
            line = input(f"[{task}] > ")
        except EOFError:
            typer.echo()
            return
        except KeyboardInterrupt:
            typer.echo()
            continue
        command, _, argument = line.strip().partition(" ")
        if command in ("/quit", "/exit"):
            return
        if command == "/help":
            typer.echo(INTERACTIVE_HELP)
        elif command == "/reset":
            conversation.reset()
            typer.echo("conversation cleared")
        elif command == "/task":
            if argument.strip() in TASKS:
                task = argument.strip()
            else:
                typer.echo(f"choose one of: {', '.join(TASKS)}")
        elif command.startswith("/"):
            typer.echo(f"unknown command {command}; /help lists them")
        elif line.strip():
            try:
                _answer(eq, line, task, json_output, False, conversation)
            except KeyboardInterrupt:
                typer.echo("\n[reply stopped]")
            except InputError as error:
                typer.echo(f"error: {error}")


@app.command()
def roles(prompts: PromptsOption = None) -> None:
    """List the roles found (shipped ones and those in --prompts DIR)."""
    try:
        found = load_roles(prompts)
    except EdgeQwenError as error:
        _fail(error)
    for role in found.values():
        labels = f" labels: {', '.join(role.label_names)}" if role.labels else ""
        typer.echo(f"{role.name:<12} {role.kind:<9} {role.description}{labels}")
        typer.echo(f"{'':<12} {role.source}")


@app.command()
def info(
    model: Annotated[Path, typer.Argument(help="A GGUF file.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the metadata as JSON.")] = False,
) -> None:
    """Print a GGUF file's metadata: architecture, size, quantization, context length, chat template."""
    try:
        gguf = inspect_gguf(model, expect_arch=None)
    except EdgeQwenError as error:
        _fail(error)
    fields = gguf.as_dict()
    from .convert.manifest import manifest_path, read_manifest, summary_lines

    manifest = read_manifest(model)  # written beside the model by `edgeqwen quantize`
    if json_output:
        if manifest is not None:
            fields["manifest"] = manifest
        typer.echo(json.dumps(fields, ensure_ascii=False, indent=2, default=str))
        return
    for key, value in fields.items():
        typer.echo(f"{key:<18} {value}")
    if manifest is not None:
        typer.echo(f"\nmanifest ({manifest_path(model).name}):")
        for line in summary_lines(manifest):
            typer.echo(f"  {line}")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Default: this machine only; 0.0.0.0 opens it to the network (set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 8080,
    model: ModelOption = None,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="EDGEQWEN_API_KEY", help="Require 'Authorization: Bearer KEY' on every endpoint but /health (or set $EDGEQWEN_API_KEY).")] = None,
    prompts: PromptsOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens.")] = DEFAULT_N_CTX,
    router: Annotated[str, typer.Option("--router", help="How task auto decides: llm or rules.")] = "llm",
    queue_size: Annotated[int, typer.Option("--queue-size", min=0, help="Requests that may wait behind the running one; more get 503 + Retry-After.")] = 8,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Largest request body (413 above).")] = 256 * 1024,
    max_text_chars: Annotated[int, typer.Option("--max-text-chars", min=1, help="Longest text or message (422 above).")] = 16_000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show llama.cpp's own log.")] = False,
) -> None:
    """Serve an OpenAI-compatible API and a web page (needs the extra: pip install 'edgeqwen\\[serve]').

    \b
    Examples:
      edgeqwen serve                         # http://127.0.0.1:8080/ (page), /v1/chat/completions, ...
      edgeqwen serve --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
    """
    if router not in STRATEGIES:
        _fail(InputError(f"unknown --router {router!r}; choose one of {', '.join(STRATEGIES)}"))
    try:
        from .server.app import ServerConfig, serve as run_server  # the optional extra: imported only here
    except ImportError as error:
        _fail(EdgeQwenError(f"edgeqwen serve needs the server extra ({error.name or error} is missing): pip install 'edgeqwen[serve]'"))
    config = ServerConfig(
        host=host, port=port, model=str(model) if model else None, api_key=api_key or None,
        prompts=str(prompts) if prompts else None, threads=threads, ctx=ctx, router=router, queue_size=queue_size,
        max_body_bytes=max_body_bytes, max_text_chars=max_text_chars, log_level=log_level, verbose=verbose,
    )
    try:
        run_server(config)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        raise typer.Exit(130)


@app.command()
def sentiment(
    inputs: Annotated[Path, typer.Argument(help="JSONL (a \"text\" field per line), CSV (a \"text\" column, else the first) or plain text (one input per line).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results here: .jsonl or .csv. Default: JSONL on stdout.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run: skip inputs already in --output.")] = False,
    role: Annotated[str, typer.Option("--role", help="Any classify role.")] = "sentiment",
    model: ModelOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens.")] = DEFAULT_N_CTX,
    prompts: PromptsOption = None,
) -> None:
    """Classify every text of a file, with a progress bar; results are flushed as they come, so Ctrl-C loses nothing.

    \b
    Examples:
      edgeqwen sentiment reviews.csv -o labels.csv
      edgeqwen sentiment reviews.jsonl -o labels.jsonl --resume   # after an interruption
    """
    from tqdm import tqdm

    from .batch import classify_file, count_inputs

    try:
        total = count_inputs(inputs)
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router="rules")
        with tqdm(total=total, unit="text", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            summary = classify_file(
                lambda text: eq.classify(text, role), inputs, output, resume=resume, stdout=sys.stdout,
                on_progress=lambda n: bar.update(n - bar.n),
            )
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: results so far are in {output or 'stdout'}" + (" (continue with --resume)" if output else ""), err=True)
        raise typer.Exit(130)
    typer.echo(f"{summary.done} classified ({summary.skipped} already done) in {summary.seconds:.1f} s: {summary.texts_per_second:.1f} texts/s", err=True)


@app.command()
def bench(
    model: ModelOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=256, help="Context window in tokens.")] = DEFAULT_N_CTX,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Repeat the short-input set this many times.")] = 1,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the figures to this JSON file.")] = None,
) -> None:
    """Measure load time, time to first result, sentiment/router latency, chat speed and peak RSS.

    Plain llama-cpp-python (a naive grammar call, raw decode) and the compute floor are measured in
    the same run, and the ratios printed, so figures compare on a noisy machine. Takes a few minutes.
    """
    from .bench import format_table, run_benchmark
    from .models import resolve_model

    try:
        figures = run_benchmark(resolve_model(model), threads, ctx, repeats, log=lambda m: typer.echo(m, err=True))
    except EdgeQwenError as error:
        _fail(error)
    typer.echo(format_table(figures))
    if json_path:
        json_path.write_text(json.dumps(figures, indent=2))


# Clear examples for the smoke check after `quantize`: (text, expected sentiment label).
SMOKE_EXAMPLES = (
    ("这家餐厅的服务太差了，我再也不会来了。", "negative"),
    ("房间干净，早餐丰富，下次还会再来。", "positive"),
    ("The battery life is amazing and the screen is gorgeous.", "positive"),
    ("Terrible product: it broke after one day and support never answered.", "negative"),
)


@app.command()
def quantize(
    repo: Annotated[str, typer.Option("--repo", help="Hugging Face repo (a Qwen1.5 / Qwen2 / Qwen2.5 checkpoint).")] = "Qwen/Qwen1.5-0.5B-Chat",
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit. Default: main.")] = None,
    local_dir: Annotated[Optional[Path], typer.Option("--local-dir", help="Use this folder instead of the Hub: the repo's files, or a Hugging Face cache.")] = None,
    qtype: Annotated[str, typer.Option("--type", "-q", help="Q4_K_M (default), Q4_0, Q5_K_M, Q8_0 or F16.")] = "Q4_K_M",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Output GGUF. Default: models/<repo name>-<type>.gguf.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: all for quantizing, physical cores for verifying.")] = None,
    keep_unquantized: Annotated[bool, typer.Option("--keep-unquantized", help="Also keep the unquantized GGUF beside the output.")] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Compare next-token distributions with the unquantized GGUF.")] = True,
    smoke: Annotated[bool, typer.Option("--smoke/--no-smoke", help="Run the sentiment role on a few clear examples afterwards.")] = True,
) -> None:
    """Build a verified GGUF from a Hugging Face checkpoint: fetch, convert (no torch), quantize, verify.

    \b
    Examples:
      edgeqwen quantize                                   # Qwen/Qwen1.5-0.5B-Chat -> models/qwen1.5-0.5b-chat-q4_k_m.gguf
      edgeqwen quantize --type Q8_0 --repo Qwen/Qwen1.5-0.5B
      edgeqwen quantize --local-dir ~/Qwen1.5-0.5B-Chat   # no network: a folder with the repo's files
    """
    import signal

    from .convert import QuantizeOptions, run_quantize, update_manifest

    def _terminate(signum, frame):  # `kill` cleans up like Ctrl-C: temporary files go, no model is left
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    options = QuantizeOptions(repo=repo, revision=revision, local_dir=local_dir, qtype=qtype, output=output,
                              threads=threads, keep_unquantized=keep_unquantized, verify=verify,
                              progress=sys.stderr.isatty())
    try:
        result = run_quantize(options, log=lambda message: typer.echo(message, err=True))
        if smoke:
            eq = EdgeQwen(result.output, n_ctx=512, threads=threads)
            checks = []
            for text, expected in SMOKE_EXAMPLES:
                label = eq.sentiment(text)
                checks.append({"text": text, "expected": expected, "label": label.label, "confidence": round(label.confidence, 3)})
                typer.echo(f"sentiment {'ok ' if label.label == expected else 'MISS'} {label.label:<8} {label.confidence:.2f}  {text}")
            correct = sum(c["label"] == c["expected"] for c in checks)
            update_manifest(result.output, sentiment_smoke_check={"correct": correct, "total": len(checks), "results": checks})
            if correct < len(checks):
                typer.echo(f"warning: the sentiment smoke check got {correct}/{len(checks)} right", err=True)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: no model was written", err=True)
        raise typer.Exit(130)
    typer.echo(str(result.output))


@app.command(name="eval")
def eval_command(
    data: Annotated[list[Path], typer.Argument(help="Labelled JSON Lines file(s): text + label (sentiment) or text + route (route); optional lang.")],
    task: Annotated[str, typer.Option("--task", "-t", help="sentiment: gold field 'label' (any classify role); route: gold field 'route' (a router role).")] = "sentiment",
    role: Annotated[Optional[str], typer.Option("--role", "-r", help="Classify role to score. Default: sentiment, or route for --task route.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the whole report (all metrics, every system) to this JSON file.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Also score the seed baselines on the same texts: the seed prompt (a reconstruction) or the rules router, and the role without its head.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the first N texts.")] = None,
    include_trained: Annotated[bool, typer.Option("--include-trained", help="Keep texts the role's head was trained on (left out by default).")] = False,
    train_head: Annotated[Optional[Path], typer.Option("--train-head", help="Train a classification head for the role on a split of DATA and write it here (.npz); reports the held-out part.")] = None,
    train_fraction: Annotated[float, typer.Option("--train-fraction", help="With --train-head: share of each (lang, label) group used for training.")] = 0.5,
    train_extra: Annotated[Optional[list[Path]], typer.Option("--train-extra", help="With --train-head: more labelled JSONL, always in the training part (never scored).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="With --train-head: the split's random seed.")] = 0,
    head_layer: Annotated[Optional[int], typer.Option("--head-layer", min=0, help="With --train-head: read transformer block N's output (mean over the input, and its last token) instead of the final state; the shipped router reads block 18 of 24.")] = None,
    model: ModelOption = None,
    prompts: PromptsOption = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads. Default: physical cores.")] = None,
    ctx: Annotated[int, typer.Option("--ctx", min=64, help="Context window in tokens.")] = DEFAULT_N_CTX,
) -> None:
    """Accuracy, per-class precision/recall/F1, confusion matrix, per-language split and latency of a classify role.

    \b
    Examples:
      edgeqwen eval sentiment_en_dev.jsonl sentiment_zh_dev.jsonl --task sentiment --compare
      edgeqwen eval router_en_dev.jsonl router_zh_dev.jsonl --task route --compare --json report.json
      edgeqwen eval router_*.jsonl --task route --train-head my_prompts/route.head.npz --head-layer 18
      edgeqwen eval prompts/route.train.jsonl --task route -m models/x.gguf --train-fraction 0.8 --train-head models/x.heads/route.head.npz
    """
    from .evaluate import EvalOptions, check_role, format_report, read_data, train_head as fit_head, evaluate

    options = EvalOptions(data=list(data), task=task, role=role, compare=compare, limit=limit,
                          include_trained=include_trained, progress=True)
    try:
        items = read_data(options.data, task, limit)  # bad data fails before the model loads
        check_role(load_roles(prompts), task, role)
        _status("loading model…")
        eq = EdgeQwen(model, n_ctx=ctx, threads=threads, prompts_dir=prompts, router="rules")
        if train_head is not None:
            extra = read_data(train_extra, task) if train_extra else []
            report = fit_head(eq, options, items, train_head, train_fraction, seed, extra, head_layer)
        else:
            report = evaluate(eq, options, items)
    except EdgeQwenError as error:
        _fail(error)
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130)
    typer.echo(format_report(report))
    if train_head is not None:
        typer.echo(f"\nhead written to {train_head}; {_head_hint(train_head, report['model_path'])}")
    if json_out is not None:
        try:
            json_out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            _fail(EdgeQwenError(f"{json_out}: cannot write the report: {error}"))


@app.command()
def doctor(
    model: ModelOption = None,
    ctx: Annotated[Optional[int], typer.Option("--ctx", min=64, help="Check this context size too (default: 2048).")] = None,
    ram_mb: Annotated[Optional[int], typer.Option("--ram-mb", min=1, help="Plan for a board with this much available RAM (MiB) instead of this one.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check this board: RAM, cores, CPU features, the llama.cpp build, and the --ctx/--threads that fit the model.

    \b
    Examples:
      edgeqwen doctor
      edgeqwen doctor --ram-mb 1024 --model models/qwen1.5-0.5b-chat-q4_k_m.gguf   # plan for a 1 GB board
    """
    from .doctor import diagnose, format_report

    report = diagnose(model, ram_bytes=ram_mb * (1 << 20) if ram_mb else None, n_ctx=ctx)
    if json_output:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2, default=str))
    else:
        for line in format_report(report):
            typer.echo(line, err=line.startswith("warning:"))
    if report.model_error:
        raise typer.Exit(1)


def _head_hint(path: Path, model_path: str) -> str:
    from .head import model_heads_dir

    if path.parent.resolve() == model_heads_dir(model_path).resolve():
        return f"roles naming  head: {path.name}  use it whenever this model runs"
    return f"name it in the role's YAML as  head: {path.name}"


def main() -> None:
    """`python -m edgeqwen.cli`; the `edgeqwen` command enters through edgeqwen.console.main, which sets
    up the same handling before this module's heavy imports. `kill` (SIGTERM) stops every command the
    way Ctrl-C does: the commands' KeyboardInterrupt handling runs (partial output kept, temporary
    files removed), and the exit code is 143."""
    from .console import catch_sigterm, run as run_app

    run_app(app, catch_sigterm())


if __name__ == "__main__":
    main()
