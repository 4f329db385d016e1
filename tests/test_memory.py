"""The engine under a hard 1 GiB memory cap, in a subprocess: sentiment and a short chat, with peak RSS.

Which cap: this machine has cgroup v1 with the memory hierarchy owned by the sandbox's process
manager and no systemd (systemd-run cannot start a scope), so no cgroup is created here. An
address-space cap (RLIMIT_AS, `prlimit --as`) cannot hold llama.cpp at 1 GiB: the model file is
mapped (469 MiB) *and* its Q4_K weights are repacked into anonymous memory, and thread arenas
reserve more, so the address space peaks at ~1.2 GiB while the resident set stays near 650 MiB.
The cap used is RLIMIT_DATA (`prlimit --data`): the kernel refuses every private allocation beyond
1 GiB (heap, KV cache, repacked weights, compute buffers); file-backed pages (the mapped model,
shared libraries) are not counted by it but are bounded by the file sizes. The test reports the
peak RSS (VmHWM: everything resident, model pages included) and requires it below 1 GiB.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from conftest import REPO

CAP = 1 << 30
CHILD = r"""
import json, sys
from edgeqwen import EdgeQwen
eq = EdgeQwen(sys.argv[1], n_ctx=2048)
label = eq.sentiment("这家餐厅的服务太差了，我再也不会来了。").label
reply = eq.chat("Say hello in five words.")
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
kib = lambda key: int(status[key].split()[0])
print(json.dumps({"label": label, "reply": reply, "peak_rss_kib": kib("VmHWM"), "data_kib": kib("VmData"),
                  "peak_vm_kib": kib("VmPeak")}))
"""


def run_capped(model: Path, limit: int, which: int = resource.RLIMIT_DATA,
               code: str = CHILD) -> subprocess.CompletedProcess:
    def cap() -> None:
        resource.setrlimit(which, (limit, limit))

    env = {**os.environ, "EDGEQWEN_MODEL": str(model)}
    return subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True,
                          preexec_fn=cap, env=env, timeout=600, cwd=REPO)


def test_engine_runs_under_a_1_gib_data_cap_and_reports_peak_rss(model_path):
    done = run_capped(model_path, CAP)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["label"] == "negative" and figures["reply"].strip()
    peak = figures["peak_rss_kib"] * 1024
    assert peak < CAP, f"peak RSS {peak / 2**20:.0f} MiB"
    assert figures["data_kib"] * 1024 < CAP
    from edgeqwen.gguf_info import inspect_gguf
    from edgeqwen.memory_plan import estimate_bytes

    estimate = estimate_bytes(inspect_gguf(model_path), 2048)
    assert abs(estimate - peak) / peak < 0.3, (estimate, peak)  # doctor's estimate is close to what was measured
    report = {"cap": "RLIMIT_DATA 1 GiB", "peak_rss_mib": round(peak / 2**20),
              "private_data_mib": round(figures["data_kib"] / 1024),
              "peak_address_space_mib": round(figures["peak_vm_kib"] / 1024),
              "doctor_estimate_mib": round(estimate / 2**20)}
    print(f"\nmemory under cap: {json.dumps(report)}")
    (REPO / "tests" / "artifacts").mkdir(exist_ok=True)
    (REPO / "tests" / "artifacts" / "memory_cap.json").write_text(json.dumps(report, indent=2) + "\n")


def test_cli_too_little_memory_is_one_line(model_path):
    code = ("import sys; sys.argv = ['edgeqwen', 'run', '--task', 'sentiment', 'hello']; "
            "from edgeqwen.console import main; main()")
    # 700 MiB of address space: the model maps, its context cannot
    done = run_capped(model_path, 700 << 20, resource.RLIMIT_AS, code)
    assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr[-500:]
