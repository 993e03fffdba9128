"""Sign an artifact or a trained model folder with the key in $RAYBALANCE_ARTIFACT_KEY_FILE.

raybalance sign RUN_DIR/ensemble

The folder is verified first (every file against its manifest's hashes); then the manifest's
HMAC-SHA256 under the key is written to ``signature.json``. With the variable set, ``raybalance
predict`` uses only folders signed with that key. Sign only folders you trust.
"""

from __future__ import annotations

import argparse
import os
import sys

from engine.artifact import (
    FORMAT,
    KEY_ENV,
    MANIFEST,
    MODEL_FORMAT,
    SIGNATURE,
    artifact_key,
    manifest_format,
    sign_manifest,
    signature_of,
    verify_artifact,
)
from engine.io import is_uri, join, write_json_atomic
from engine.remote import fetch
from jobs.common import console, prog, run_main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog("sign", "jobs.sign"), description=__doc__.split("\n")[0])
    p.add_argument("artifact", help="ensemble artifact folder, or one trained model folder")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    key = artifact_key()
    if key is None:
        raise ValueError(f"set {KEY_ENV} to the file that holds your key to sign with it")
    folder = args.artifact
    local = fetch(folder)  # a folder in a bucket: verified in a local copy
    fmt = MODEL_FORMAT if manifest_format(local) == MODEL_FORMAT else FORMAT
    try:
        verify_artifact(local, fmt, signed=False)
    except ValueError as e:  # (named as given, not as the local copy of a bucket's folder)
        raise ValueError(str(e).replace(local, folder)) from None
    if is_uri(folder):
        with open(os.path.join(local, MANIFEST), "rb") as f:
            write_json_atomic(join(folder, SIGNATURE), signature_of(f.read(), key))
    else:
        sign_manifest(folder, key)
    console.print(f"signed {folder} ({SIGNATURE})")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
