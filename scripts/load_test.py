"""Load test for `edgeqwen serve`: concurrent clients mixing sentiment and chat, against 127.0.0.1 only.

Starts its own server subprocess on a free loopback port (it never targets another host), warms it
up, then runs `--clients` threads that each send `--requests` requests in turn: sentiment, a chat
completion, a streamed chat completion. Bounded in count (clients × requests) and in time
(`--deadline`: no new request after it; every socket has a timeout).

A request is *served* (200 and a well-formed answer), *rejected* (503 with Retry-After: the queue
was full; the client waits Retry-After, capped, before its next request) or *lost* (anything else:
an error status, a timeout, a broken stream, a malformed answer). Lost must be 0.

Prints a table and writes JSON (default tests/artifacts/load_test.json). Exit code 1 if any request
was lost. Usage: python scripts/load_test.py [--clients 32] [--requests 4] [--queue-size 8]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeqwen.server.launch import ServerProcess  # noqa: E402

KINDS = ("sentiment", "chat", "chat_stream")
TEXTS = [
    "这家餐厅的服务太差了，我再也不会来了。",
    "The battery lasts all day and the screen is gorgeous.",
    "物流很快，包装完好，质量超出预期。",
    "I wanted to like this film, but the plot drags.",
]
QUESTIONS = ["Name one famous Chinese dish.", "用一句话介绍一下长城。", "What is 2 + 2?", "Give me one tip for "
                                                                               "sleeping well."]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 3)


class Client:
    def __init__(self, server: ServerProcess, max_tokens: int, timeout: float) -> None:
        self.server, self.max_tokens, self.timeout = server, max_tokens, timeout

    def request(self, kind: str, n: int) -> dict:
        started = time.perf_counter()
        record = {"kind": kind, "outcome": "lost", "status": None, "latency_s": None, "error": None}
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=self.timeout)
        try:
            if kind == "sentiment":
                path, body = "/v1/sentiment", {"text": TEXTS[n % len(TEXTS)]}
            else:
                path = "/v1/chat/completions"
                body = {"model": "chat", "max_tokens": self.max_tokens, "stream": kind == "chat_stream",
                        "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}]}
            conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            record["status"] = response.status
            payload = response.read().decode("utf-8")
            record["latency_s"] = round(time.perf_counter() - started, 3)
            if response.status == 503:
                retry_after = response.getheader("Retry-After")
                if retry_after and retry_after.isdigit() and json.loads(payload)["error"]["code"] == "queue_full":
                    record.update(outcome="rejected", retry_after=int(retry_after))
                else:
                    record["error"] = f"503 without Retry-After/queue_full: {payload[:200]}"
            elif response.status != 200:
                record["error"] = f"HTTP {response.status}: {payload[:200]}"
            else:
                problem = self.check(kind, payload)
                record.update(outcome="served" if problem is None else "lost", error=problem)
        except Exception as error:  # noqa: BLE001 - every failure is counted, none is raised
            record["error"] = f"{type(error).__name__}: {error}"
            record["latency_s"] = round(time.perf_counter() - started, 3)
        finally:
            conn.close()
        return record

    @staticmethod
    def check(kind: str, payload: str) -> str | None:
        """None if the answer is well formed, else what is wrong with it."""
        if kind == "sentiment":
            label = json.loads(payload).get("label")
            return None if label in ("positive", "negative") else f"bad label {label!r}"
        if kind == "chat":
            content = json.loads(payload)["choices"][0]["message"]["content"]
            return None if content else "empty reply"
        events = [line[6:] for line in payload.splitlines() if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "stream did not end with [DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        if any("error" in c for c in chunks):
            return f"error in stream: {chunks[-1]}"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        return None if text else "empty streamed reply"


def run(args: argparse.Namespace) -> dict:
    server_args = ["--queue-size", str(args.queue_size), "--log-level", "warning"]
    if args.model:
        server_args += ["--model", args.model]
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    with ServerProcess(*server_args) as server:
        client = Client(server, args.max_tokens, args.timeout)
        for kind in ("sentiment", "chat"):  # warm-up: first evaluations, route calibration
            warm = client.request(kind, 0)
            if warm["outcome"] != "served":
                raise SystemExit(f"warm-up {kind} failed: {warm}")
        rss_before = server.rss_kib()
        records: list[dict] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.deadline
        start_gate = threading.Barrier(args.clients)

        def worker(number: int) -> None:
            start_gate.wait()
            for i in range(args.requests):
                if time.monotonic() >= deadline:
                    return
                record = client.request(KINDS[(number + i) % len(KINDS)], number + i)
                record["client"] = number
                with lock:
                    records.append(record)
                if record["outcome"] == "rejected":
                    time.sleep(min(record["retry_after"], args.max_backoff))

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(args.deadline + args.timeout + 30)
        wall = time.perf_counter() - started
        health = server.health()["queue"]
        rss_after = server.rss_kib()
        peak = next((int(line.split()[1]) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                     if line.startswith("VmHWM:")), 0)

    served = [r for r in records if r["outcome"] == "served"]
    summary = {
        "clients": args.clients,
        "requests_per_client": args.requests,
        "queue_size": args.queue_size,
        "max_tokens": args.max_tokens,
        "threads": args.threads or "default",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "sent": len(records),
        "not_sent_deadline": args.clients * args.requests - len(records),
        "served": len(served),
        "rejected_503": sum(r["outcome"] == "rejected" for r in records),
        "lost": sum(r["outcome"] == "lost" for r in records),
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(served) / wall, 2) if wall else None,
        "latency_s": {"p50": percentile([r["latency_s"] for r in served], 50),
                      "p90": percentile([r["latency_s"] for r in served], 90)},
        "by_kind": {
            kind: {
                "served": sum(1 for r in served if r["kind"] == kind),
                "rejected_503": sum(1 for r in records if r["kind"] == kind and r["outcome"] == "rejected"),
                "lost": sum(1 for r in records if r["kind"] == kind and r["outcome"] == "lost"),
                "p50_s": percentile([r["latency_s"] for r in served if r["kind"] == kind], 50),
                "p90_s": percentile([r["latency_s"] for r in served if r["kind"] == kind], 90),
            }
            for kind in KINDS
        },
        "rss_mib": {"before": round(rss_before / 1024, 1), "after": round(rss_after / 1024, 1),
                    "peak": round(peak / 1024, 1)},
        "server_queue_after": health,
        "errors": [r["error"] for r in records if r["outcome"] == "lost"][:20],
    }
    return {"summary": summary, "records": records}


def print_table(summary: dict) -> None:
    print(f"\nedgeqwen serve load test: {summary['clients']} clients x {summary['requests_per_client']} requests, "
          f"queue {summary['queue_size']}, chat max_tokens {summary['max_tokens']}, {summary['wall_s']} s")
    print(f"{'kind':<12} {'served':>7} {'503':>6} {'lost':>5} {'p50 s':>8} {'p90 s':>8}")
    for kind, row in summary["by_kind"].items():
        print(f"{kind:<12} {row['served']:>7} {row['rejected_503']:>6} {row['lost']:>5} {row['p50_s'] or '-':>8} "
              f"{row['p90_s'] or '-':>8}")
    lat = summary["latency_s"]
    print(f"{'all':<12} {summary['served']:>7} {summary['rejected_503']:>6} {summary['lost']:>5} "
          f"{lat['p50'] or '-':>8} {lat['p90'] or '-':>8}")
    rss = summary["rss_mib"]
    print(f"requests sent {summary['sent']} (not sent before the deadline: {summary['not_sent_deadline']}), "
          f"throughput {summary['throughput_rps']} served/s")
    print(f"server RSS: before {rss['before']} MiB, after {rss['after']} MiB, peak {rss['peak']} MiB")
    queue = summary["server_queue_after"]
    print(f"server queue after: busy={queue['busy']} waiting={queue['waiting']} served={queue['served']} "
          f"rejected={queue['rejected']} cancelled={queue['cancelled']} failed={queue['failed']}")
    for error in summary["errors"]:
        print(f"  lost: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=4, help="requests per client (bounded count)")
    parser.add_argument("--queue-size", type=int, default=8, help="the server's --queue-size")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of each chat request")
    parser.add_argument("--deadline", type=float, default=600, help="seconds after which no new request starts")
    parser.add_argument("--timeout", type=float, default=300, help="socket timeout of each request")
    parser.add_argument("--max-backoff", type=float, default=10, help="cap on honouring Retry-After")
    parser.add_argument("--model", help="GGUF file (default: as edgeqwen serve finds it)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: physical cores)")
    parser.add_argument("--json", type=Path, default=REPO / "tests" / "artifacts" / "load_test.json")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100):
        parser.error("--clients must be 1..256 and --requests 1..100")
    result = run(args)
    print_table(result["summary"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.json}")
    return 1 if result["summary"]["lost"] else 0


if __name__ == "__main__":
    sys.exit(main())
