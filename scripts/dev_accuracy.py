"""Accuracy and latency of a classify role on a labelled JSONL file (stop-gap until `edgeqwen eval`).

    python scripts/dev_accuracy.py ../shared/data/sentiment_en_dev.jsonl --role sentiment --field label
    python scripts/dev_accuracy.py ../shared/data/router_zh_dev.jsonl --router llm --field route
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from edgeqwen import EdgeQwen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("--field", default="label", help="the gold field: label (sentiment) or route")
    parser.add_argument("--role", default="sentiment", help="classify role to score (ignored with --router)")
    parser.add_argument("--router", choices=["llm", "rules"], help="score the router instead of a role")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()

    rows = [json.loads(line) for line in open(args.data, encoding="utf-8") if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    eq = EdgeQwen(router=args.router or "llm")
    correct, latencies = 0, []
    for row in rows:
        started = time.perf_counter()
        predicted = eq.route(row["text"]).task if args.router else eq.classify(row["text"], args.role).label
        latencies.append((time.perf_counter() - started) * 1000)
        correct += predicted == row[args.field]
    latencies.sort()
    print(json.dumps({
        "data": args.data, "what": f"router:{args.router}" if args.router else f"role:{args.role}", "n": len(rows),
        "accuracy": round(correct / len(rows), 4),
        "p50_ms": round(statistics.median(latencies), 1), "p90_ms": round(latencies[int(0.9 * (len(latencies) - 1))], 1),
    }))


if __name__ == "__main__":
    main()
