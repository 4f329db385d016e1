#!/usr/bin/env python3
"""Labels of both shipped roles on a fixed sample of the dev sets, to compare two machines (aarch64 against x86).

The sample is every k-th line of each dev file (SAMPLE below: 214 texts, 107 English and 107 Chinese),
never chosen by hand. Each text gets one `--task auto` evaluation (EdgeQwen.run without the chat
reply: the route, and the sentiment label when it routes to sentiment), written as it is done (an
emulated run takes hours; a cut one keeps what it did); the first TOGETHER sentiment texts of each
language are also labelled together in batches (EdgeQwen.classify_many, the engine's other path),
written to OUT.together.jsonl.

    python scripts/label_sample.py label --data DIR --out labels.jsonl [--model M] [--threads N] [--shard K/N]
    python scripts/label_sample.py compare x86.jsonl aarch64.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# dev file -> (every k-th line, the gold field): 100 + 100 sentiment texts, 40 + 40 route texts
SAMPLE = {"sentiment_en_dev.jsonl": (24, "label"), "sentiment_zh_dev.jsonl": (3, "label"),
          "router_en_dev.jsonl": (2, "route"), "router_zh_dev.jsonl": (4, "route")}
BATCH = 16
TOGETHER = 16  # per language: 32 texts in 2 batches


def sample(data: Path) -> list[dict]:
    """The texts in turn from each file (a run cut short still covers both roles and languages)."""
    files = []
    for name, (every, field) in SAMPLE.items():
        lines = (data / name).read_text(encoding="utf-8").splitlines()
        rows = [(number, json.loads(lines[number])) for number in range(0, len(lines), every)]
        files.append([{"id": f"{name}:{number + 1}", "text": row["text"], "lang": row["lang"], "gold_field": field,
                       "gold": row[field]} for number, row in rows])
    return [item for group in itertools.zip_longest(*files) for item in group if item]


def label(data: Path, out: Path, model: str | None, threads: int | None, shard: str = "0/1",
          done: tuple[Path, ...] = (), reverse: bool = False) -> None:
    """shard K/N: every N-th text from the K-th (N one-thread processes use N cores with no threads waiting
    for each other; concatenate their files before comparing)."""
    from edgeqwen import EdgeQwen

    index, count = map(int, shard.split("/"))
    items = sample(data)
    chosen_ids = {item["id"] for lang in ("en", "zh")
                  for item in [i for i in items if i["gold_field"] == "label" and i["lang"] == lang][:TOGETHER]}
    items = items[index::count]
    done_ids = {json.loads(line)["id"] for path in (out, *done) if path.exists()
                for line in path.read_text(encoding="utf-8").splitlines()}
    todo = [item for item in items if item["id"] not in done_ids]  # a second run goes on where the first stopped
    todo = todo[::-1] if reverse else todo  # a helper process takes a shard's texts from the end
    started = time.perf_counter()
    eq = EdgeQwen(model, threads=threads)
    print(f"model loaded in {time.perf_counter() - started:.0f} s; {len(todo)} of {len(items)} texts to do", flush=True)
    with out.open("a", encoding="utf-8") as sink:
        for done, item in enumerate(todo, start=1):
            result = eq.run(item["text"], "auto", chat=False)
            item.update(route=result.route.task, auto_label=result.sentiment.label if result.sentiment else None)
            sink.write(json.dumps(item, ensure_ascii=False) + "\n")
            sink.flush()
            if done % 10 == 0:
                print(f"  auto {done}/{len(todo)} ({time.perf_counter() - started:.0f} s)", flush=True)
    chosen = [item for item in items if item["id"] in chosen_ids]
    with together_file(out).open("w", encoding="utf-8") as sink:
        for start in range(0, len(chosen), BATCH):
            chunk = chosen[start:start + BATCH]
            for item, result in zip(chunk, eq.classify_many([i["text"] for i in chunk], "sentiment")):
                sink.write(json.dumps({"id": item["id"], "batch_label": result.label}) + "\n")
            sink.flush()
            print(f"  together {start + len(chunk)}/{len(chosen)} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s")


def together_file(out: Path) -> Path:
    return out.with_suffix(".together.jsonl")


def read_labels(path: Path) -> dict[str, dict]:
    rows = {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    if together_file(path).exists():
        for row in map(json.loads, together_file(path).read_text(encoding="utf-8").splitlines()):
            rows[row["id"]]["batch_label"] = row["batch_label"]
    return rows


def compare(first: Path, second: Path) -> int:
    """Agreement per role, path and language (on every text both label) and each file's accuracy (on the
    texts whose gold answer is that role's: routes for the router's dev texts, labels for sentiment's)."""
    a, b = read_labels(first), read_labels(second)
    if not b.keys() <= a.keys():
        print("the two files label different samples", file=sys.stderr)
        return 2
    if len(b) < len(a):
        print(f"{second} labels {len(b)} of {len(a)} texts (a cut run): comparing those", file=sys.stderr)
        a = {i: a[i] for i in b}
    paths = {"route (auto)": ("route", "route"), "sentiment (auto)": ("auto_label", "label"),
             "sentiment (together)": ("batch_label", "label")}
    print(f"| role (path) | lang | texts | agree | gold texts | accuracy {first.stem} | accuracy {second.stem} |")
    print("|---|---|---|---|---|---|---|")
    worst = 1.0
    for role, (key, gold_field) in paths.items():
        for lang in ("en", "zh", "all"):
            pairs = [(row, b[i]) for i, row in a.items()
                     if lang in ("all", row["lang"]) and row.get(key) and b[i].get(key)]
            if not pairs:
                continue
            agree = sum(x[key] == y[key] for x, y in pairs) / len(pairs)
            gold = [(x, y) for x, y in pairs if x["gold_field"] == gold_field]
            accuracy = [f"{sum(p[i][key] == p[i]['gold'] for p in gold) / len(gold):.1%}" if gold else "-"
                        for i in (0, 1)]
            worst = min(worst, agree)
            print(f"| {role} | {lang} | {len(pairs)} | {agree:.1%} | {len(gold)} | {accuracy[0]} | {accuracy[1]} |")
    return 0 if worst >= 0.99 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("label")
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--model")
    run.add_argument("--threads", type=int, help="llama.cpp threads (1 under emulation on a busy machine: no spinning)")
    run.add_argument("--shard", default="0/1", help="K/N: label every N-th text from the K-th")
    run.add_argument("--done", type=Path, nargs="*", default=[],
                     help="label files of earlier runs: their texts are skipped")
    run.add_argument("--reverse", action="store_true", help="from the shard's last text (a second process on a shard)")
    both = sub.add_parser("compare")
    both.add_argument("first", type=Path)
    both.add_argument("second", type=Path)
    args = parser.parse_args()
    if args.command == "label":
        label(args.data, args.out, args.model, args.threads, args.shard, tuple(args.done), args.reverse)
        return 0
    return compare(args.first, args.second)


if __name__ == "__main__":
    sys.exit(main())
