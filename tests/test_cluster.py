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

import numpy as np
import pandas as pd
import pytest

from tests._s3 import in_env, make_bucket, s3_server
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
    # an S3 server (moto) for the runs kept in a bucket; each node's processes have a temp
    # folder of their own (TMPDIR), where a run folder in a bucket is mirrored
    s3 = s3_server(tmp / "s3.log")
    env.update(s3.__enter__())
    tmpdirs = {"head": Path(temp) / "tmp-head", "second": Path(temp) / "tmp-second"}
    for d in tmpdirs.values():
        d.mkdir()
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
            {**env, "TMPDIR": str(tmpdirs["head"])},
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
            {**env, "TMPDIR": str(tmpdirs["second"])},
        )
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
        info = {"env": env, "url": f"http://127.0.0.1:{dash}", "token": token, "tmp": tmp}
        info["tmpdirs"] = tmpdirs
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
        s3.__exit__(None, None, None)
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


def _job(cluster: dict, sid: str = SUBMISSION) -> dict:
    code, body = _api(cluster, f"/api/jobs/{sid}")
    assert code == 200, code
    return body


def _submit(cluster: dict, data: Path, run: Path | str, sid: str = SUBMISSION) -> None:
    # README step 6, with this test's data, run folder and two training workers (one per node)
    args = ["--config", "jobs/configs/demo.yaml"]
    for s in [f"data.path={data}", f"run_dir={run}", *SMALL, "train.num_workers=2"]:
        args += ["--set", s]
    _submit_job(cluster, sid, ["-m", "jobs.pipeline", *args])


def _submit_job(cluster: dict, sid: str, python_args: list[str]) -> None:
    cmd = ["job", "submit", "--address", cluster["url"], "--submission-id", sid]
    cmd += ["--no-wait", "--working-dir", ".", "--", "python", *python_args]
    proc = _ray(cmd, cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _delete_job(cluster: dict, sid: str, seconds: float = 60) -> None:
    """``ray job delete`` until Ray has forgotten the job: the supervisor of a job whose driver
    was killed may write the job's final state once more after a first delete (seen on a
    loaded machine: the next submit with the id then failed, "already exists")."""
    deadline = time.monotonic() + seconds
    while True:
        proc = _ray(["job", "delete", "--address", cluster["url"], sid], cluster["env"])
        gone = proc.returncode == 0 or "does not exist" in proc.stdout + proc.stderr
        assert gone or time.monotonic() < deadline, proc.stdout[-2000:] + proc.stderr[-2000:]
        time.sleep(3)  # a late write of the job's state lands within this
        if _api(cluster, f"/api/jobs/{sid}")[0] == 404:
            return
        assert time.monotonic() < deadline, f"job {sid} still known after deleting it"


def _logs(cluster: dict, sid: str = SUBMISSION) -> str:
    return _ray(["job", "logs", "--address", cluster["url"], sid], cluster["env"]).stdout


def _wait_done(cluster: dict, sid: str, seconds: float = 540) -> str:
    """Wait for the job to succeed; returns its logs (fails the test on another end)."""
    deadline = time.monotonic() + seconds
    while (status := _job(cluster, sid)["status"]) != "SUCCEEDED":
        assert status in ("PENDING", "RUNNING"), f"job {status}: {_logs(cluster, sid)[-4000:]}"
        assert time.monotonic() < deadline, f"not done in time: {_logs(cluster, sid)[-3000:]}"
        time.sleep(2)
    return _logs(cluster, sid)


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
    _delete_job(cluster, SUBMISSION)
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
    # the gbdt trial's 2 workers: one data-parallel fit under a LightGBMTrainer
    gbdt = table.loc[table["model.kind"] == "gbdt", "trial_id"].item()
    rows = json.loads((run / "tune/trials" / gbdt / "metrics.json").read_text())
    assert rows[0]["workers"] == 2 and rows[0]["val_macro_f1"] > 0
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


def _mlp_search(cluster: dict, sid: str, data: Path, run: Path, sets: list[str]) -> pd.DataFrame:
    """``jobs.tune`` of MLP trials (the tests' small settings and ``sets``) submitted as a Ray
    job; its results table once it succeeded."""
    space = '{"model.kind": {grid: [mlp]}, "loss.name": {choice: [focal, weighted_ce]}}'
    args = ["-m", "jobs.tune", "--config", "jobs/configs/demo.yaml"]
    for s in [f"data.path={data}", f"run_dir={run}", *SMALL, *sets, f"tune.search_space={space}"]:
        args += ["--set", s]
    _submit_job(cluster, sid, args)
    _wait_done(cluster, sid, seconds=420)
    return pd.read_parquet(run / "tune/results.parquet")


@pytest.mark.integration
def test_a_search_of_two_worker_trials_streaming_their_shards_spans_both_nodes(cluster, trec50):
    # a trial's two workers (0.49 CPU each) and its trial actor (0.01) leave no node a whole
    # CPU (seen: both workers on one node, the actor on the other), so the streamed shards' Ray
    # Data tasks must ask for less than one: asking a whole CPU, the first trial waited forever
    run = cluster["tmp"] / "stream-run"
    sid = "raybalance-stream-search"
    sets = ["train.num_workers=2", "sampler.mode=stream", "sampler.kind=balanced"]
    table = _mlp_search(cluster, sid, trec50, run, [*sets, "tune.num_samples=2"])
    assert len(table) == 2 and set(table["status"]) == {"completed"}
    for trial in table["trial_id"]:  # both epochs, each a batch of 128 from two workers
        saved = sorted((run / "tune/trials" / trial / "ray/fit").glob("checkpoint_*/history.json"))
        rows = json.loads(saved[-1].read_text())
        assert [r["epoch"] for r in rows] == [0, 1]
        assert all(r["workers"] == 2 and r["samples_per_step"] == 128 for r in rows)
    _delete_job(cluster, sid)


@pytest.mark.integration
def test_a_search_of_one_worker_trials_two_at_once_spans_both_nodes(cluster, trec50):
    # two light trials at once (0.49 CPU each) sit one per node (seen): no node has a whole CPU
    # left, so each trial's own data tasks (its reads) must ask for less than one — asking a
    # whole CPU, both trials waited forever
    run = cluster["tmp"] / "light-run"
    sid = "raybalance-light-search"
    sets = ["tune.max_concurrent_trials=2", "tune.num_samples=4"]
    table = _mlp_search(cluster, sid, trec50, run, sets)
    assert len(table) == 4 and set(table["status"]) == {"completed"}
    job = _job(cluster, sid)["job_id"]
    code, body = _api(cluster, "/api/v0/actors?limit=10000&detail=true")
    assert code == 200
    trials = [
        a
        for a in body["data"]["result"]["result"]
        if a.get("class_name") == "ImplicitFunc" and a.get("job_id") == job
    ]
    assert len(trials) >= 2 and {a["node_id"] for a in trials} == set(cluster["nodes"])
    _delete_job(cluster, sid)


def _bucket_files(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return sorted(i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File)


def _bucket_statuses(run: str) -> dict[str, str]:
    """The trials' states in the search state Tune keeps in the bucket."""
    from engine.io import read_json

    states = [f for f in _bucket_files(f"{run}/tune/ray") if "experiment_state-" in f]
    if not states:
        return {}
    try:
        data = read_json(f"{run}/tune/ray/{sorted(states)[-1]}")
    except (OSError, ValueError):  # being rewritten
        return {}
    return {(t := json.loads(row[0]))["trial_id"]: t["status"] for row in data["trial_data"]}


def _mirrors(tmpdir: Path) -> set[str]:
    """The URIs mirrored under a node's temp folder (``engine.remote``)."""
    from engine.remote import MARKER

    return {
        json.loads(m.read_text())["uri"]
        for m in (tmpdir / "raybalance" / "runs").glob(f"*/{MARKER}")
    }


@pytest.mark.integration
def test_a_run_in_a_bucket_spans_both_nodes_resumes_from_it_and_predicts_from_it(cluster, trec50):
    """The bucket is the only storage the nodes share for this run (each node mirrors into a
    temp folder of its own): the pipeline with run_dir=s3://..., its driver killed mid-search
    and the job submitted again, resumes from the search state and trial folders in the
    bucket; then `raybalance predict` reads the artifact from the bucket and writes there."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from safetensors.numpy import load

    from engine.io import read_json

    sid = "raybalance-bucket"
    with in_env({k: v for k, v in cluster["env"].items() if k.startswith("AWS_")}):
        run = f"{make_bucket('cluster-run')}/run"
        _submit(cluster, trec50, run, sid)
        deadline = time.monotonic() + 540
        while "TERMINATED" not in _bucket_statuses(run).values():
            status = _job(cluster, sid)["status"]
            assert status in ("PENDING", "RUNNING"), f"job {status}: {_logs(cluster, sid)[-4000:]}"
            assert time.monotonic() < deadline, f"no trial finished: {_logs(cluster, sid)[-3000:]}"
            time.sleep(1)
        os.kill(int(_job(cluster, sid)["driver_info"]["pid"]), signal.SIGKILL)
        while _job(cluster, sid)["status"] not in ("FAILED", "STOPPED"):
            assert time.monotonic() < deadline, "the killed job was not marked failed"
            time.sleep(1)
        finished = {t for t, st in _bucket_statuses(run).items() if st == "TERMINATED"}
        files = _bucket_files(run)
        assert finished and "tune/results.parquet" not in files
        assert "baseline/metrics.json" in files
        # the 2-worker baseline's workers persisted their checkpoints into the bucket
        assert any(f.startswith("baseline/ray/") and "checkpoint_" in f for f in files)

        _submit(cluster, trec50, run, f"{sid}-again")  # a new job, the same run_dir
        logs = _wait_done(cluster, f"{sid}-again")
        assert "baseline: complete artifact found, skipped" in logs
        table = pq.read_table(f"{run}/tune/results.parquet").to_pandas()
        assert len(table) == 4 and set(table["status"]) == {"completed"}
        attempts = dict(zip(table["trial_id"], table["attempts"]))
        assert {t: attempts[t] for t in finished} == {t: 1 for t in finished}  # not run again
        assert all(str(d).startswith(f"{run}/tune/trials/") for d in table["best_dir"])
        files = _bucket_files(run)
        for rel in ("report/report.html", "report/metrics.json", "ensemble/manifest.json"):
            assert rel in files
        assert any(f.startswith("logs/pipeline-") for f in files), logs[-3000:]
        # what each node mirrored: the run on the head (its driver), the trials where they ran
        head, second = (_mirrors(cluster["tmpdirs"][n]) for n in ("head", "second"))
        assert run in head and run not in second
        trials = {f"{run}/tune/trials/{t}" for t in attempts}
        assert trials <= head | second

        out = f"{run.rpartition('/')[0]}/predictions"
        args = ["-m", "jobs.cli", "predict", f"{run}/ensemble", f"{run}/splits/test"]
        _submit_job(cluster, "raybalance-predict", [*args, "--out", out])
        _wait_done(cluster, "raybalance-predict")
        got = pq.read_table(out).to_pandas()
        labels = read_json(f"{run}/label_map.json")["labels"]
        proba = np.stack([got[f"proba_{k}"].to_numpy() for k in labels], axis=1)
        fs, path = pafs.FileSystem.from_uri(f"{run}/scores.safetensors")
        with fs.open_input_stream(path) as f:
            expected = load(f.read())["test/ensemble"]
        assert proba.shape == expected.shape
        assert np.allclose(proba, expected, atol=2e-4)  # row by row: the split's file order
