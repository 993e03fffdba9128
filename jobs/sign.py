"""Sign an artifact or a trained model folder with the key in $RAYBALANCE_ARTIFACT_KEY_FILE.

raybalance sign RUN_DIR/ensemble

The folder is verified first (every file against its manifest's hashes); then the manifest's
HMAC-SHA256 under the key is written to ``signature.json``. With the variable set, ``raybalance
predict`` uses only folders signed with that key. Sign only folders you trust.
"""

from __future__ import annotations

import argparse
import sys

from engine.artifact import (
    FORMAT,
    KEY_ENV,
    MODEL_FORMAT,
    SIGNATURE,
    artifact_key,
    manifest_format,
    sign_manifest,
    verify_artifact,
)
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
    fmt = MODEL_FORMAT if manifest_format(args.artifact) == MODEL_FORMAT else FORMAT
    verify_artifact(args.artifact, fmt, signed=False)
    sign_manifest(args.artifact, key)
    console.print(f"signed {args.artifact} ({SIGNATURE})")


if __name__ == "__main__":
    sys.exit(run_main(main, None))
