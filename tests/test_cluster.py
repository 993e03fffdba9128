"""A real two-node Ray cluster on this machine, token authentication on, used the way the
README's "From laptop to cluster" section says: the token from ``ray get-auth-token
--generate``, ``RAY_AUTH_MODE=token`` on every node and in the client, and the pipeline sent with
``ray job submit --working-dir .``. The head (``ray start --head``) and the second node
(``ray start --address``) each have one CPU and a resource of their own, so a 2-worker training
run spans both. The test kills the job's driver mid-search, deletes the failed job and submits it
again under the same submission id: the run continues and the finished trials are not rerun.
A job-API request without the token, or with a wrong one, is refused. The fixture stops its own
cluster (its processes, found by its temp dir and ports), whatever happens, and no other."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.test_pipeline import SMALL
from tests.test_tune import _attempts, _tune_statuses

ROOT = Path(__file__).parent.parent
SUBMISSION = "raybalance-two-nodes"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(marks: list[str]) -> None:
    """Kill the processes whose command line matches one of ``marks``, and their children."""
    import psutil

    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
            if any(re.search(m, line) for m in marks):
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        except psutil.Error:
            pass
    found.pop(os.getpid(), None)
    for p in found.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(found.values()), timeout=20)


def _ray(args: list[str], env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    ray = str(Path(sys.executable).parent / "ray")
    return subprocess.run(
        [ray, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _api(cluster: dict, path: str, token: str | None = "from-cluster") -> tuple[int, object]:
    token = cluster["token"] if token == "from-cluster" else token
    req = urllib.request.Request(f"{cluster['url']}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    home = tmp / "home"
    home.mkdir()
    temp = tempfile.mkdtemp(prefix="rbc-", dir="/tmp")  # short: socket paths are limited
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        RAY_TMPDIR=temp,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # the job's `python` is this interpreter: the nodes' PATH is what the driver inherits
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        RAYBALANCE_TRACEBACK="1",  # a failed job shows where in its log
        RAY_DATA_PARQUET_FOOTER_NUM_ACTORS="2",
    )
    gcs, dash, client, agent_a, agent_b = _free_ports(5)
    marks = [re.escape(temp), rf":{gcs}\b"]
    try:
        # README step 3: the cluster's token, readable by its owner only
        proc = _ray(["get-auth-token", "--generate"], env)
        assert proc.returncode == 0, proc.stderr
        token_file = home / ".ray" / "auth_token"
        token_file.chmod(0o600)
        token = token_file.read_text().strip()
        common = ["--disable-usage-stats", "--object-store-memory=300000000", "--num-cpus=1"]
        head = _ray(
            [
                "start",
                "--head",
                f"--port={gcs}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}",
                f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent_a}",
                "--min-worker-port=23000",
                "--max-worker-port=23999",
                '--resources={"node_head": 1}',
                *common,
            ],
            env,
        )
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        second = _ray(
            [
                "start",
                f"--address=127.0.0.1:{gcs}",
                # a temp dir of its own, as on a machine of its own: with a shared one, this
                # node's runtime-env agent deletes the job's working_dir package (the driver's
                # cwd on the head) when its own tasks stop using it
                f"--temp-dir={temp}/b",
                f"--dashboard-agent-listen-port={agent_b}",
                "--min-worker-port=24000",
                "--max-worker-port=24999",
                '--resources={"node_second": 1}',
                *common,
            ],
            env,
        )
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        info = {"env": env, "url": f"http://127.0.0.1:{dash}", "token": token, "tmp": tmp}
        deadline = time.monotonic() + 120
        while True:
            code, body = _api(info, "/api/v0/nodes?limit=100&detail=true")
            alive = [] if code != 200 else body["data"]["result"]["result"]
            alive = [n for n in alive if n["state"] == "ALIVE"]
            if len(alive) == 2:
                break
            assert time.monotonic() < deadline, f"two nodes not up: {code} {alive}"
            time.sleep(1)
        info["nodes"] = {n["node_id"]: n for n in alive}
        yield info
    finally:
        _stop(marks)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.integration
def test_each_node_has_its_own_resources_and_the_job_api_needs_the_token(cluster):
    totals = [n["resources_total"] for n in cluster["nodes"].values()]
    assert sorted(k for t in totals for k in t if k.startswith("node_")) == [
        "node_head",
        "node_second",
    ]
    assert all(t["CPU"] == 1 for t in totals)
    assert _api(cluster, "/api/jobs/", token=None)[0] == 401  # no token: unauthorized
    assert _api(cluster, "/api/jobs/", token="0" * 64)[0] == 403  # a wrong token: forbidden
    assert _api(cluster, "/api/jobs/")[0] == 200
    # the CLI without the token mode: refused too, with the reason
    env = {k: v for k, v in cluster["env"].items() if k != "RAY_AUTH_MODE"}
    env["HOME"] = str(cluster["tmp"] / "elsewhere")
    proc = _ray(["job", "list", "--address", cluster["url"]], env)
    assert proc.returncode != 0
    assert "401" in proc.stdout + proc.stderr or "auth" in (proc.stdout + proc.stderr).lower()


def _job(cluster: dict) -> dict:
    code, body = _api(cluster, f"/api/jobs/{SUBMISSION}")
    assert code == 200, code
    return body


def _submit(cluster: dict, data: Path, run: Path) -> None:
    # README step 6, with this test's data, run folder and two training workers (one per node)
    cmd = ["job", "submit", "--address", cluster["url"], "--submission-id", SUBMISSION]
    cmd += ["--no-wait", "--working-dir", ".", "--", "python", "-m", "jobs.pipeline"]
    cmd += ["--config", "jobs/configs/demo.yaml"]
    for s in [f"data.path={data}", f"run_dir={run}", *SMALL, "train.num_workers=2"]:
        cmd += ["--set", s]
    proc = _ray(cmd, cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _logs(cluster: dict) -> str:
    return _ray(["job", "logs", "--address", cluster["url"], SUBMISSION], cluster["env"]).stdout


@pytest.mark.integration
def test_pipeline_submitted_to_two_nodes_survives_its_driver_killed_and_resubmitted(
    cluster, trec50
):
    run = cluster["tmp"] / "run"
    _submit(cluster, trec50, run)
    deadline = time.monotonic() + 540
    while "TERMINATED" not in _tune_statuses(run).values():
        status = _job(cluster)["status"]
        assert status in ("PENDING", "RUNNING"), f"job {status}: {_logs(cluster)[-4000:]}"
        assert time.monotonic() < deadline, f"no trial finished in time: {_logs(cluster)[-3000:]}"
        time.sleep(1)
    job = _job(cluster)
    os.kill(int(job["driver_info"]["pid"]), signal.SIGKILL)  # the driver (python), mid-search
    while _job(cluster)["status"] not in ("FAILED", "STOPPED"):
        assert time.monotonic() < deadline, "the killed job was not marked failed"
        time.sleep(1)
    finished = {t for t, s in _tune_statuses(run).items() if s == "TERMINATED"}
    assert finished and not (run / "tune/results.parquet").exists()
    assert "baseline: done" in _logs(cluster)
    splits_run = json.loads((run / "splits/_manifest.json").read_text())["run"]
    baseline = (run / "baseline").stat().st_mtime_ns

    # the same submission id again: the failed job is deleted first, as Ray requires
    proc = _ray(["job", "delete", "--address", cluster["url"], SUBMISSION], cluster["env"])
    assert proc.returncode == 0, proc.stderr
    _submit(cluster, trec50, run)
    deadline = time.monotonic() + 540
    while (status := _job(cluster)["status"]) != "SUCCEEDED":
        assert status in ("PENDING", "RUNNING"), f"job {status}: {_logs(cluster)[-4000:]}"
        assert time.monotonic() < deadline, f"not done in time: {_logs(cluster)[-3000:]}"
        time.sleep(2)
    logs = _logs(cluster)
    assert "baseline: complete artifact found, skipped" in logs
    assert (run / "baseline").stat().st_mtime_ns == baseline
    assert json.loads((run / "splits/_manifest.json").read_text())["run"] == splits_run
    assert "plain CE baseline" in logs and "ensemble of" in logs

    table = pd.read_parquet(run / "tune/results.parquet")
    # the demo's grid: mlp, lexical, linear, gbdt, one sample each
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    attempts = dict(zip(table["trial_id"], table["attempts"]))
    assert {t: attempts[t] for t in finished} == {t: 1 for t in finished}  # not run again
    assert all(_attempts(run, t) == attempts[t] for t in attempts)
    metrics = json.loads((run / "report/metrics.json").read_text())
    assert metrics["test"]["ensemble"]["macro_f1"] > 0
    assert (run / "ensemble/manifest.json").exists()

    # work ran on both nodes: the 2-worker training runs put a Ray Train worker on each
    code, body = _api(cluster, "/api/v0/actors?limit=10000&detail=true")
    assert code == 200
    actors = body["data"]["result"]["result"]
    workers = {a["node_id"] for a in actors if "TrainWorker" in (a.get("class_name") or "")}
    assert workers == set(cluster["nodes"]), sorted(
        {(a.get("class_name"), a["node_id"][:8]) for a in actors}
    )
