"""Hostile clients against `edgeqwen serve`, mixed with honest ones, on 127.0.0.1 only.

Starts its own server subprocess on a free loopback port (it never targets another host), then for
`--deadline` seconds runs honest clients (sentiment, a chat, a streamed chat, and /v1/run streamed as
the server's own page sends it) beside hostile ones, each bounded in count:

  huge_max_tokens  streamed chats asking for max_tokens 1e9 ("count to 100000")
  cross_origin     text/plain POSTs from Origin http://evil.example (a web page's "simple request")
  rebinding        JSON requests whose Host and Origin are evil.example (a DNS-rebinding page)
  slow_body        connections that send their body one byte every 2 s
  slow_headers     connections that send their headers one byte every 2 s
  hostile_json     nested 50,000 deep, 5,000-digit numbers, NaN, duplicate keys, invalid UTF-8, lone surrogates
  run_flood        bursts of concurrent /v1/run chats
  huge_history     chats with 255 long history messages

An honest request is *served* (200 and a well-formed answer; a reply cut by a limit counts),
*rejected* (503: the server refused it at once; the client waits Retry-After, capped, or 2 s without
one, before its next request; those without are counted apart: uvicorn's connection limit) or *lost*
(anything else: an error status, no answer within --timeout, a broken stream). Prints a table (and
writes JSON): honest requests by outcome, what the hostile ones got, the server's peak RSS,
tracebacks in its log, and whether it still answers at the end. Exit code 1 if an honest request
was lost or the server stopped answering.

Usage: python scripts/hostile_clients.py [--deadline 150] [--code DIR]   (--code: run the server
from another checkout, e.g. to measure main before a change)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgeqwen.server.launch import ServerProcess  # noqa: E402

EVIL = "evil.example"
TEXTS = [
    "这家餐厅的服务太差了，我再也不会来了。",
    "The battery lasts all day and the screen is gorgeous.",
    "物流很快，包装完好，质量超出预期。",
    "I wanted to like this film, but the plot drags.",
]
QUESTIONS = [
    "Name one famous Chinese dish.",
    "用一句话介绍一下长城。",
    "What is 2 + 2?",
    "Give me one tip for sleeping well.",
]
HONEST_KINDS = ("sentiment", "chat", "chat_stream", "page_run")


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2) if ordered else None


class Target:
    """The server under test, and how to talk to it (every socket has a timeout)."""

    def __init__(self, server: ServerProcess, timeout: float) -> None:
        self.host, self.port, self.timeout = server.host, server.port, timeout
        self.origin = f"http://{self.host}:{self.port}"

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        conn.request(method, path, body=body, headers=headers)
        return conn, conn.getresponse()

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, bytes]:
        """(status, headers, body) or raises on a network error or timeout."""
        conn, response = self.send(method, path, body, {"Content-Type": "application/json", **(headers or {})})
        try:
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


# -- honest clients --------------------------------------------------------------------------------


def honest_request(target: Target, kind: str, n: int) -> dict:
    record = {"kind": kind, "outcome": "lost", "status": None, "latency_s": None, "error": None}
    started = time.perf_counter()
    headers = {"Content-Type": "application/json"}
    if kind == "sentiment":
        path, body = "/v1/sentiment", {"text": TEXTS[n % len(TEXTS)]}
    elif kind == "page_run":  # as static/app.js sends it: same origin, streamed
        path, body = "/v1/run", {"text": QUESTIONS[n % len(QUESTIONS)], "task": "chat", "stream": True}
        headers["Origin"] = target.origin
    else:
        path = "/v1/chat/completions"
        body = {
            "model": "chat",
            "max_tokens": 24,
            "stream": kind == "chat_stream",
            "messages": [{"role": "user", "content": QUESTIONS[n % len(QUESTIONS)]}],
        }
    try:
        conn, response = target.send("POST", path, json.dumps(body).encode(), headers)
        try:
            payload = response.read().decode("utf-8")
        finally:
            conn.close()
        record["status"] = response.status
        if response.status == 503:
            retry_after = response.getheader("Retry-After") or ""
            record.update(outcome="rejected", retry_after=int(retry_after) if retry_after.isdigit() else None)
        elif response.status != 200:
            record["error"] = f"HTTP {response.status}: {payload[:160]}"
        else:
            problem = check_answer(kind, payload)
            record.update(outcome="served" if problem is None else "lost", error=problem)
    except Exception as error:  # noqa: BLE001 - every failure is counted, none is raised
        record["error"] = f"{type(error).__name__}: {error}"
    record["latency_s"] = round(time.perf_counter() - started, 2)
    return record


def check_answer(kind: str, payload: str) -> str | None:
    """None if the answer is well formed, else what is wrong with it."""
    if kind == "sentiment":
        return None if json.loads(payload).get("label") in ("positive", "negative") else "bad label"
    if kind == "chat":
        return None if json.loads(payload)["choices"][0]["message"]["content"] else "empty reply"
    events = [line[6:] for line in payload.splitlines() if line.startswith("data: ")]
    if kind == "chat_stream":
        if not events or events[-1] != "[DONE]" or any('"error"' in e for e in events):
            return f"broken stream: {events[-2:]}"
        return None
    parsed = [json.loads(e) for e in events]
    if not parsed or parsed[-1].get("type") != "done" or not parsed[-1]["result"].get("reply"):
        return f"broken run stream: {parsed[-1:]}"
    return None


def honest_client(
    target: Target, number: int, requests: int, deadline: float, max_backoff: float, records: list
) -> None:
    for i in range(requests):
        if time.monotonic() >= deadline:
            return
        record = honest_request(target, HONEST_KINDS[(number + i) % len(HONEST_KINDS)], number + i)
        records.append(record)
        if record["outcome"] == "rejected":
            time.sleep(min(record["retry_after"] or 2, max_backoff))


# -- hostile clients -------------------------------------------------------------------------------


class Tally:
    """What the hostile requests got, by kind: status codes, "timeout", "closed", ..."""

    def __init__(self) -> None:
        self.counts: dict[str, Counter] = defaultdict(Counter)
        self.notes: dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()

    def add(self, kind: str, outcome: str, note: str | None = None) -> None:
        with self.lock:
            self.counts[kind][outcome] += 1
            if note and len(self.notes[kind]) < 6:
                self.notes[kind].append(note)


def outcome_of(error: Exception) -> str:
    return "timeout" if isinstance(error, (TimeoutError, socket.timeout)) else "closed"


def post_raw(target: Target, tally: Tally, kind: str, path: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        status, _, payload = target.call("POST", path, body, headers)
        tally.add(kind, str(status), f"{status} {payload[:140].decode('utf-8', 'replace')}" if status != 200 else None)
    except Exception as error:  # noqa: BLE001
        tally.add(kind, outcome_of(error), f"{type(error).__name__}: {error}")


def huge_max_tokens(target: Target, tally: Tally, count: int, deadline: float, stream_cap: float) -> None:
    body = {
        "model": "chat",
        "stream": True,
        "max_tokens": 1_000_000_000,
        "messages": [{"role": "user", "content": "Count from 1 to 100000, separated by commas. Do not stop."}],
    }
    for _ in range(count):
        if time.monotonic() >= deadline:
            return
        started = time.monotonic()
        try:
            conn, response = target.send(
                "POST", "/v1/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            try:
                if response.status != 200:
                    tally.add("huge_max_tokens", str(response.status), response.read()[:160].decode("utf-8", "replace"))
                    time.sleep(1)
                    continue
                pieces, finish = 0, None
                while time.monotonic() - started < stream_cap:
                    line = response.fp.readline()
                    if not line or line.startswith(b"data: [DONE]"):
                        break
                    pieces += line.startswith(b"data: ")
                    if b'"finish_reason":"' in line:
                        finish = json.loads(line[6:])["choices"][0]["finish_reason"]
                held = round(time.monotonic() - started)
                tally.add(
                    "huge_max_tokens",
                    f"200 {finish or 'cut by client'}",
                    f"200: {pieces} chunks in {held} s, finish {finish}",
                )
            finally:
                conn.close()
        except Exception as error:  # noqa: BLE001
            tally.add("huge_max_tokens", outcome_of(error), f"{type(error).__name__}: {error}")


def cross_origin(target: Target, tally: Tally, count: int, deadline: float) -> None:
    """What a web page anywhere can send without a preflight: text/plain, and a foreign Origin."""
    chat = json.dumps(
        {"model": "chat", "max_tokens": 48, "messages": [{"role": "user", "content": "Say something nice."}]}
    ).encode()
    for i in range(count):
        if time.monotonic() >= deadline:
            return
        path, body = (
            ("/v1/sentiment", json.dumps({"text": "great"}).encode()) if i % 2 else ("/v1/chat/completions", chat)
        )
        post_raw(
            target,
            tally,
            "cross_origin",
            path,
            body,
            {"Content-Type": "text/plain;charset=UTF-8", "Origin": f"http://{EVIL}"},
        )
        time.sleep(0.5)


def rebinding(target: Target, tally: Tally, count: int, deadline: float) -> None:
    """A page at http://evil.example:PORT whose name now resolves to 127.0.0.1: same origin to the browser."""
    chat = json.dumps(
        {"model": "chat", "max_tokens": 48, "messages": [{"role": "user", "content": "Tell me a secret."}]}
    ).encode()
    own = f"{EVIL}:{target.port}"
    for i in range(count):
        if time.monotonic() >= deadline:
            return
        headers = {"Host": own, "Origin": f"http://{own}"} if i % 2 else {"Host": own}
        path, body = ("/v1/chat/completions", chat) if i % 3 else ("/v1/models", None)
        if body is None:
            try:
                status, _, payload = target.call("GET", path, None, headers)
                tally.add("rebinding", str(status))
            except Exception as error:  # noqa: BLE001
                tally.add("rebinding", outcome_of(error))
        else:
            post_raw(target, tally, "rebinding", path, body, {"Content-Type": "application/json", **headers})
        time.sleep(0.5)


def slow_connections(target: Target, tally: Tally, kind: str, count: int, deadline: float, give_up: float) -> None:
    """`count` connections that dribble one byte every 2 s: the body (slow_body) or the headers (slow_headers)."""
    body = json.dumps({"text": "slow " * 200}).encode()
    head = (
        f"POST /v1/sentiment HTTP/1.1\r\nHost: {target.host}:{target.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sent_at_once, dribble = (
        (head, body) if kind == "slow_body" else (b"POST /v1/sentiment HTTP/1.1\r\n", head[30:] + body)
    )
    sockets: dict[socket.socket, dict] = {}
    for _ in range(count):
        try:
            sock = socket.create_connection((target.host, target.port), timeout=10)
            sock.sendall(sent_at_once)
            sockets[sock] = {"offset": 0, "opened": time.monotonic()}
        except OSError as error:
            tally.add(kind, "refused", str(error))
    end = min(deadline, time.monotonic() + give_up)
    while sockets and time.monotonic() < end:
        readable, _, _ = select.select(list(sockets), [], [], 2.0)
        for sock in readable:  # the server answered or closed the connection
            state = sockets.pop(sock)
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            status = data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"
            tally.add(kind, status, f"{status} after {time.monotonic() - state['opened']:.0f} s")
            sock.close()
        for sock, state in list(sockets.items()):
            try:
                sock.sendall(dribble[state["offset"] : state["offset"] + 1])
                state["offset"] += 1
            except OSError:
                sockets.pop(sock)
                tally.add(kind, "closed", f"closed after {time.monotonic() - state['opened']:.0f} s")
                sock.close()
    for sock in sockets:
        tally.add(kind, "held until the client gave up")
        sock.close()


HOSTILE_BODIES = {
    "nested_array": ("/v1/sentiment", b"[" * 50_000 + b"]" * 50_000),
    "nested_in_field": ("/v1/chat/completions", b'{"model":"chat","messages":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
    "huge_integer": (
        "/v1/chat/completions",
        b'{"model":"chat","max_tokens":' + b"9" * 5000 + b',"messages":[{"role":"user","content":"hi"}]}',
    ),
    "huge_seed": (
        "/v1/chat/completions",
        b'{"model":"chat","max_tokens":4,"seed":' + b"9" * 40 + b',"messages":[{"role":"user","content":"hi"}]}',
    ),
    "nan": (
        "/v1/chat/completions",
        b'{"model":"chat","temperature":NaN,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}',
    ),
    "infinity": (
        "/v1/chat/completions",
        b'{"model":"chat","top_p":1e999,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}',
    ),
    "duplicate_keys": ("/v1/sentiment", b'{"text":"I love it","text":"I hate it"}'),
    "invalid_utf8": ("/v1/sentiment", b'{"text":"\xff\xfe bad bytes"}'),
    "utf16_body": ("/v1/sentiment", '{"text":"good"}'.encode("utf-16")),
    "lone_surrogate": ("/v1/run", b'{"text":"\\ud800 broken","task":"sentiment"}'),
}


def hostile_json(target: Target, tally: Tally, rounds: int, deadline: float) -> None:
    for _ in range(rounds):
        for name, (path, body) in HOSTILE_BODIES.items():
            if time.monotonic() >= deadline:
                return
            try:
                status, _, payload = target.call("POST", path, body)
                tally.add("hostile_json", str(status))
                tally.add(f"hostile_json.{name}", str(status), f"{status} {payload[:160].decode('utf-8', 'replace')}")
            except Exception as error:  # noqa: BLE001
                tally.add("hostile_json", outcome_of(error))
                tally.add(f"hostile_json.{name}", outcome_of(error), str(error))
        time.sleep(2)


def run_flood(target: Target, tally: Tally, bursts: int, size: int, deadline: float) -> None:
    body = json.dumps({"text": "Tell me a long story about a dragon who learns to cook.", "task": "chat"}).encode()
    for _ in range(bursts):
        if time.monotonic() >= deadline:
            return
        threads = [
            threading.Thread(target=post_raw, args=(target, tally, "run_flood", "/v1/run", body, {}))
            for _ in range(size)
        ]
        for thread in threads:
            thread.start()
        time.sleep(20)


def huge_history(target: Target, tally: Tally, count: int, deadline: float) -> None:
    turn = "Tell me more about the history of tea in China and Japan, please. " * 13  # ~900 characters
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": turn} for i in range(254)]
    body = json.dumps(
        {"model": "chat", "max_tokens": 8, "messages": [*history, {"role": "user", "content": "And now?"}]}
    ).encode()
    for _ in range(count):
        if time.monotonic() >= deadline:
            return
        started = time.monotonic()
        post_raw(target, tally, "huge_history", "/v1/chat/completions", body, {})
        tally.add("huge_history.seconds", f"{round(time.monotonic() - started)}")
        time.sleep(5)


# -- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    server_args = ["--queue-size", str(args.queue_size), "--log-level", "warning", *args.server_arg]
    if args.model:
        server_args += ["--model", args.model]
    if args.threads:
        server_args += ["--threads", str(args.threads)]
    code = str(Path(args.code).resolve()) if args.code else str(REPO)
    os.chdir(code)  # `python -m edgeqwen` puts its working directory first on sys.path, before PYTHONPATH
    with ServerProcess(*server_args, env={"PYTHONPATH": code}) as server:
        target = Target(server, args.timeout)
        warm = [honest_request(target, kind, 0) for kind in ("sentiment", "chat")]
        if any(w["outcome"] != "served" for w in warm):
            raise SystemExit(f"warm-up failed: {warm}")
        rss_before = server.rss_kib()
        records: list[dict] = []
        tally = Tally()
        deadline = time.monotonic() + args.deadline
        jobs = [
            *(lambda n=n: honest_client(target, n, args.requests, deadline, 10, records) for n in range(args.clients)),
            *(lambda: huge_max_tokens(target, tally, 3, deadline, args.timeout) for _ in range(3)),
            lambda: cross_origin(target, tally, 40, deadline),
            lambda: rebinding(target, tally, 40, deadline),
            lambda: slow_connections(target, tally, "slow_body", 40, deadline, 90),
            lambda: slow_connections(target, tally, "slow_headers", 40, deadline, 90),
            lambda: hostile_json(target, tally, 3, deadline),
            lambda: run_flood(target, tally, 3, 24, deadline),
            lambda: huge_history(target, tally, 3, deadline),
        ]
        threads = [threading.Thread(target=job, daemon=True) for job in jobs]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(1.0, deadline - time.monotonic()) + args.timeout + 30)
        wall = time.perf_counter() - started
        still_running = sum(thread.is_alive() for thread in threads)
        final = honest_request(target, "chat", 1)
        try:
            health = json.loads(target.call("GET", "/health")[2])["queue"]
        except Exception as error:  # noqa: BLE001
            health = {"error": str(error)}
        peak = next(
            (
                int(line.split()[1])
                for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                if line.startswith("VmHWM:")
            ),
            0,
        )
        rss_after = server.rss_kib()
        log = Path(server._log.name).read_text(errors="replace")
    summary = {
        "code": code,
        "clients": args.clients,
        "queue_size": args.queue_size,
        "server_args": server_args,
        "wall_s": round(wall, 1),
        "threads_still_running": still_running,
        "honest": {
            "sent": len(records),
            "served": sum(r["outcome"] == "served" for r in records),
            "rejected_503": sum(r["outcome"] == "rejected" for r in records),
            "rejected_without_retry_after": sum(
                r["outcome"] == "rejected" and r["retry_after"] is None for r in records
            ),
            "lost": sum(r["outcome"] == "lost" for r in records),
            "p50_s": percentile([r["latency_s"] for r in records if r["outcome"] == "served"], 50),
            "p90_s": percentile([r["latency_s"] for r in records if r["outcome"] == "served"], 90),
            "by_kind": {
                kind: dict(Counter(r["outcome"] for r in records if r["kind"] == kind)) for kind in HONEST_KINDS
            },
            "lost_errors": [r["error"] for r in records if r["outcome"] == "lost"][:12],
        },
        "hostile": {kind: dict(counts) for kind, counts in sorted(tally.counts.items())},
        "hostile_notes": dict(tally.notes),
        "rss_mib": {
            "before": round(rss_before / 1024, 1),
            "after": round(rss_after / 1024, 1),
            "peak": round(peak / 1024, 1),
        },
        "tracebacks_in_log": log.count("Traceback"),
        "answers_at_end": final["outcome"] == "served" and "error" not in health,
        "final_request": final,
        "server_queue_after": health,
    }
    return summary


def print_table(summary: dict) -> None:
    honest = summary["honest"]
    print(
        f"\nedgeqwen serve under hostile clients ({summary['code']}): {summary['clients']} honest clients, "
        f"queue {summary['queue_size']}, {summary['wall_s']} s"
    )
    print(
        f"honest: sent {honest['sent']}, served {honest['served']}, rejected 503 {honest['rejected_503']} "
        f"({honest['rejected_without_retry_after']} without Retry-After), lost {honest['lost']}; "
        f"served p50 {honest['p50_s']} s, p90 {honest['p90_s']} s"
    )
    for kind, outcomes in honest["by_kind"].items():
        print(f"  {kind:<12} {outcomes}")
    print("hostile requests (what they got):")
    for kind, outcomes in summary["hostile"].items():
        print(f"  {kind:<30} {outcomes}")
    rss = summary["rss_mib"]
    print(
        f"server RSS: before {rss['before']} MiB, after {rss['after']} MiB, peak {rss['peak']} MiB; "
        f"tracebacks in its log: {summary['tracebacks_in_log']}; answers at the end: {summary['answers_at_end']}"
    )
    for error in honest["lost_errors"]:
        print(f"  lost: {error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="honest clients")
    parser.add_argument("--requests", type=int, default=12, help="requests per honest client (bounded count)")
    parser.add_argument("--queue-size", type=int, default=8, help="the server's --queue-size")
    parser.add_argument("--deadline", type=float, default=150, help="seconds after which no new request starts")
    parser.add_argument(
        "--timeout", type=float, default=240, help="socket timeout; an honest request not answered by then is lost"
    )
    parser.add_argument("--model", help="GGUF file (default: as edgeqwen serve finds it)")
    parser.add_argument("--threads", type=int, help="the server's --threads (default: physical cores)")
    parser.add_argument(
        "--server-arg", action="append", default=[], help="another option for edgeqwen serve (repeatable)"
    )
    parser.add_argument(
        "--code", help="run the server from this checkout (PYTHONPATH), e.g. /work/main for a before figure"
    )
    parser.add_argument("--json", type=Path, default=REPO / "tests" / "artifacts" / "hostile_clients.json")
    args = parser.parse_args()
    if not (1 <= args.clients <= 32 and 1 <= args.requests <= 100 and 10 <= args.deadline <= 900):
        parser.error("--clients must be 1..32, --requests 1..100, --deadline 10..900")
    args.json = args.json.resolve()
    summary = run(args)
    print_table(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.json}")
    return 1 if summary["honest"]["lost"] or not summary["answers_at_end"] else 0


if __name__ == "__main__":
    sys.exit(main())
