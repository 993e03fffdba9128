"""An S3-compatible server for the tests: moto's server mode on 127.0.0.1, started and stopped
by the test that needs it; clients reach it through the usual AWS environment variables."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(port: int) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[dict[str, str]]:
    """Start moto's S3 server on a free local port; yields the AWS variables that point
    clients (pyarrow, Ray) at it. The server is this test's own process, killed at the end."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    assert exe, "moto_server is not installed: pip install -e '.[dev]'"
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the S3 server did not start in 30 s"
            time.sleep(0.2)
        yield aws_env(port)
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def in_env(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in this process for the block (pyarrow reads it when a filesystem is made)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make_bucket(name: str) -> str:
    """Create ``name`` on the server the environment points at; returns ``s3://name``."""
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True
    )
    fs.create_dir(name)
    return f"s3://{name}"
