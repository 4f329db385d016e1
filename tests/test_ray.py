"""edgeqwen on a real local Ray cluster (2 CPUs, 2 model slots): batch files through actors, an actor killed mid-run,
Ray Serve.

One cluster for the module, started in this process and joined by the CLI subprocesses through its
address; it is shut down (every Ray process with it) when the module's tests are done, so it does not
idle beside the rest of the suite. Every model copy uses one llama.cpp thread: on a shared 2-core
machine two copies of two threads each slow each other down many times over.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra: pip install -e '.[ray]' (make test installs it)")
openai = pytest.importorskip("openai", reason="the test extra installs openai: pip install -e '.[test]'")

from edgeqwen import settings  # noqa: E402
from edgeqwen.server.launch import ServerProcess  # noqa: E402

from conftest import read_line_until, run_cli  # noqa: E402
from test_server import KEY, write_test_prompts  # noqa: E402

pytestmark = pytest.mark.ray

EN = [f"The {item} {verdict}."
      for item in ("phone", "hotel room", "pizza", "laptop", "headphones", "coffee", "delivery", "battery")
      for verdict in ("is excellent, I love it", "works perfectly", "was great value", "broke after two days",
                      "is terrible", "was a waste of money")]
ZH = [f"{item}{verdict}。" for item in ("手机", "酒店", "外卖", "电脑", "耳机", "咖啡", "快递", "电池")
      for verdict in ("非常好，很满意", "质量超出预期", "物美价廉，推荐", "太差了，很失望", "用了两天就坏了",
                      "完全不值这个价")]
TEXTS = list(itertools.islice(itertools.cycle(EN + ZH), 200))
TEXTS[50] = "   "  # an input that cannot be classified: its record carries the error, in its place


def _write_inputs(path: Path, texts: list[str]) -> Path:
    lines = [json.dumps({"text": text, "id": i}, ensure_ascii=False) for i, text in enumerate(texts)]
    lines.insert(100, "")  # a blank line is skipped, and shifts the line numbers after it
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ray_cluster(model_path):
    """A local cluster: 2 CPUs, 2 model slots; its address for the CLI; every Ray process gone afterwards.
    Every test on it runs the real model."""
    temp = tempfile.mkdtemp(prefix="eq-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env_before = dict(os.environ)
    ray.init(num_cpus=2, resources={settings.RAY_SLOT: 2}, include_dashboard=False, _temp_dir=temp,
             logging_level="WARNING")
    try:
        yield {"address": ray.get_runtime_context().gcs_address, "temp": temp}
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(env_before)  # ray.init sets RAY_AUTH_MODE etc. for this process
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory, cli):
    """The input file and what the single-process command writes for it (one thread)."""
    folder = tmp_path_factory.mktemp("ray-batch")
    inputs = _write_inputs(folder / "reviews.jsonl", TEXTS)
    reference = folder / "reference.jsonl"
    done = cli("sentiment", str(inputs), "--threads", "1", "-o", str(reference))
    assert done.returncode == 0, done.stderr
    return inputs, reference.read_text(encoding="utf-8")


def test_a_file_through_two_actors_equals_the_single_process_output(ray_cluster, files, cli, tmp_path):
    inputs, reference = files
    output = tmp_path / "ray.jsonl"
    done = cli("sentiment", str(inputs), "--ray-address", ray_cluster["address"], "--actors", "2", "--threads", "1",
               "-o", str(output))
    assert done.returncode == 0, done.stderr
    assert output.read_text(encoding="utf-8") == reference  # line for line: same records, order and labels
    assert b"200 classified (0 already done)" in done.stderr and b"Traceback" not in done.stderr
    records = [json.loads(line) for line in reference.splitlines()]
    assert len(records) == 200 and records[50]["error"] and records[-1]["line"] == 201


def _map_workers(temp: str) -> set[int]:
    """Pids of this cluster's Ray Data actors: `ray::MapWorker...` processes whose raylet runs under `temp`."""
    raylets, workers = set(), {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"raylet" in cmdline.split(b"\0")[0] and temp.encode() in cmdline:
            raylets.add(int(entry.name))
        elif cmdline.startswith(b"ray::MapWorker"):
            workers[int(entry.name)] = parent
    return {pid for pid, parent in workers.items() if parent in raylets}


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(ray_cluster, files, tmp_path):
    from edgeqwen.cluster import RayOptions, classify_file_on_ray

    inputs, reference = files
    # The file's first 128 inputs: 4 blocks of 32, so 2 are still to run when the first is written; their
    # records are the reference's first 128 lines (the blocks hold the same batches).
    short = tmp_path / "short.jsonl"
    short.write_text("".join(inputs.read_text(encoding="utf-8").splitlines(keepends=True)[:129]), encoding="utf-8")
    expected = "".join(reference.splitlines(keepends=True)[:128])
    output = tmp_path / "killed.jsonl"
    written, outcome = [0], {}

    def run() -> None:
        try:
            outcome["summary"] = classify_file_on_ray(short, output, RayOptions(actors=2, threads=1),
                                                      on_progress=lambda n: written.__setitem__(0, n))
        except BaseException as error:  # noqa: BLE001 - reported by the test below
            outcome["error"] = error

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 240
    while written[0] < 32 and job.is_alive():  # a block is written: both actors have started on the next ones
        assert time.monotonic() < deadline, "no result within 240 s"
        time.sleep(0.1)
    before = _map_workers(ray_cluster["temp"])
    assert len(before) == 2 and written[0] < 128, (before, written)  # both actors hold a block still to come
    victim = min(before)
    os.kill(victim, signal.SIGKILL)  # as the kernel's OOM killer would
    job.join(timeout=300)
    assert not job.is_alive() and "error" not in outcome, outcome.get("error")
    assert not Path(f"/proc/{victim}").exists()
    # Ray ran the killed actor's block again (on the other actor, or on the killed one restarted):
    # had it been lost, the run would have ended with "returned N of 128 results".
    assert outcome["summary"].done == 128
    assert output.read_text(encoding="utf-8") == expected


def test_a_users_ray_dataset_keeps_its_columns(ray_cluster):
    from edgeqwen.cluster import RayOptions, classify_dataset

    dataset = ray.data.from_items([{"id": 7, "text": "Great phone, I love it!"},
                                   {"id": 8, "text": "质量太差，非常失望。"}, {"id": 9, "text": ""}])
    rows = sorted(classify_dataset(dataset, RayOptions(actors=1, threads=1)).take_all(), key=lambda row: row["id"])
    assert [row["label"] for row in rows] == ["positive", "negative", None]
    assert [row["text"] for row in rows][:2] == ["Great phone, I love it!", "质量太差，非常失望。"]
    assert rows[0]["display"] == "正面 positive" and 0.5 < rows[0]["confidence"] <= 1 and rows[0]["error"] is None
    assert "empty" in rows[2]["error"]


def test_cluster_errors_are_one_line(ray_cluster, files, cli, tmp_path):
    from edgeqwen.cluster import RayOptions, classify_file_on_ray
    from edgeqwen.errors import EdgeQwenError

    inputs, _ = files
    for options, role, expected in [
        (RayOptions(actors=3, threads=1), "sentiment",
         "3 model copies asked for, but the cluster holds 2 with 1 threads each"),
        (RayOptions(threads=3), "sentiment", "no node of the Ray cluster offers a model slot with 3 free CPUs"),
        (RayOptions(model="/nowhere/model.gguf", model_sha256="ab" * 32, threads=1), "sentiment",
         "no model file at /nowhere/model.gguf"),
        (RayOptions(model_sha256="00" * 32, threads=1), "sentiment", "not the --model-sha256 given"),
        (RayOptions(threads=1), "chat", "chat"),
    ]:
        with pytest.raises(EdgeQwenError, match=re.escape(expected)) as raised:
            classify_file_on_ray(inputs, tmp_path / "never.jsonl", options, role=role)
        assert "\n" not in str(raised.value)
    # The command: the same errors, as one line and a non-zero exit, never a traceback.
    for args, expected in [(["--ray-address", ray_cluster["address"], "--actors", "3", "--threads", "1"],
                            "but the cluster holds 2"),
                           (["--actors", "2"], "--actors only apply with --ray")]:
        done = cli("sentiment", str(inputs), *args, "-o", str(tmp_path / "never.jsonl"))
        assert done.returncode != 0 and b"Traceback" not in done.stderr
        assert done.stderr.decode().strip().splitlines()[-1].startswith("error: ") and expected in done.stderr.decode()


def test_without_ray_installed_it_says_how_to_install_it(tmp_path):
    fake = tmp_path / "no-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\", name='ray')\n")
    (tmp_path / "in.txt").write_text("fine\n")
    for command in (["sentiment", str(tmp_path / "in.txt"), "--ray"], ["serve", "--ray"]):
        done = run_cli(*command, env={"PYTHONPATH": str(fake.parent)})
        assert done.returncode == 1
        assert done.stderr.decode().strip() == ("error: --ray needs the ray extra (ray is missing): "
                                                "pip install 'edgeqwen[ray]'")


# -- Ray Serve -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory, model_path):
    """`edgeqwen serve --ray` over 2 replicas of 1 thread and 1 chat slot, on the module's cluster, with the server
    tests' key and roles."""
    prompts = write_test_prompts(tmp_path_factory.mktemp("ray-prompts"))
    args = ["--ray", "--ray-address", ray_cluster["address"], "--replicas", "2", "--threads", "1", "--model",
            str(model_path),
            "--prompts", str(prompts), "--api-key", KEY, "--queue-size", "0", "--slots", "1", "--max-text-chars",
            "2000", "--log-level", "warning"]
    server = ServerProcess(*args, startup_timeout=240).start()  # up once one replica answers /health
    deadline = time.monotonic() + 120
    while _replica_states().get("RUNNING") != 2:
        assert time.monotonic() < deadline, _replica_states()
        time.sleep(0.5)
    yield server
    assert server.stop(timeout=60) == 130, server.log_text()


def _replica_states() -> dict:
    from ray import serve

    return serve.status().applications["edgeqwen"].deployments["edgeqwen"].replica_states


def _call(server, method: str, path: str, body=None, key: str | None = KEY):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_serve_answers_the_openai_client_on_two_replicas(served, model_path):
    assert _replica_states() == {"RUNNING": 2}
    client = openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    assert {model_path.stem, "chat", "sentiment", "topic"} <= {model.id for model in client.models.list().data}
    completion = client.chat.completions.create(model="chat",
                                                messages=[{"role": "user",
                                                           "content": "What is the capital of France?"}])
    assert "Paris" in completion.choices[0].message.content
    stream = client.chat.completions.create(model="chat",
                                            messages=[{"role": "user", "content": "Count from 1 to 10."}],
                                            max_tokens=8, stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert len(pieces) >= 3
    label = client.chat.completions.create(model="sentiment",
                                           messages=[{"role": "user",
                                                      "content": "这家餐厅的服务太差了，我再也不会来了。"}])
    assert label.choices[0].message.content == "negative"


def test_serve_sentiment_auth_limits_and_errors_match_edgeqwen_serve(served):
    status, _, one = _call(served, "POST", "/v1/sentiment",
                           {"text": "The battery lasts all day and the screen is gorgeous."})
    assert status == 200 and one["label"] == "positive" and one["display"] == "正面 positive"
    status, _, many = _call(served, "POST", "/v1/sentiment", {"texts": ["房间很小，空调还坏了。", "Great phone, I love "
                                                                                       "it!"]})
    assert status == 200 and [r["label"] for r in many["results"]] == ["negative", "positive"]
    assert _call(served, "GET", "/health", key=None)[0] == 200
    status, headers, error = _call(served, "GET", "/v1/models", key="wrong")
    assert status == 401 and headers.get("www-authenticate") == "Bearer" and error["error"]["code"] == "invalid_api_key"
    status, _, error = _call(served, "POST", "/v1/sentiment", {"text": "y" * 2001})
    assert status == 422 and error["error"]["code"] == "text_too_long"
    status, _, error = _call(served, "GET", "/v1/nothing-here")
    assert status == 404 and error["error"]["message"] == "no such endpoint: GET /v1/nothing-here"


def test_serve_busy_replicas_answer_503_with_retry_after(served):
    # One chat slot and queue size 0: each replica runs one chat and queues no other; with both generating, a third
    # is refused.
    body = json.dumps({"model": "chat", "stream": True, "max_tokens": 1000,
                       "messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas. Do not "
                                                                "stop early."}]}).encode()
    open_streams, refused = [], None
    try:
        for _ in range(3):
            conn = http.client.HTTPConnection(served.host, served.port, timeout=300)
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            response = conn.getresponse()
            open_streams.append(conn)
            if response.status == 503:
                refused = (dict(response.getheaders()), json.loads(response.read()))
                break
            assert response.status == 200
            read_line_until(response, lambda line: b'"content":"' in line)  # generating: the replica is busy
    finally:
        for conn in open_streams:
            conn.close()
    assert refused is not None, "three long requests on two replicas of queue size 0: one must be refused"
    headers, error = refused
    assert int(headers["retry-after"]) >= 1 and error["error"]["code"] == "queue_full"
