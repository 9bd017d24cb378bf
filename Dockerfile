# syntax=docker/dockerfile:1
# One Dockerfile, two images; choose with --target (BuildKit, the default builder since Docker 23):
#   docker build --target operator -t ghcr.io/lensllm/operator:0.1.0 .   # kopf operator, no torch
#   docker build --target runner   -t ghcr.io/lensllm/runner:0.1.0 .     # trial runner, CUDA PyTorch
# The Helm chart (charts/lensllm) names these two images; their tags follow the package version.
# .dockerignore lets only pyproject.toml, README.md and the Python sources into the build context.

# Pinned bases. The runner's torch must be the version the `runner` extra pins (torch==2.13.0);
# cuda13.0 is the CUDA of torch 2.13.0's default wheels and needs an NVIDIA driver >= 580.
# Override with --build-arg PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda12.<x>-cudnn9-runtime for older drivers.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
ARG PYTORCH_IMAGE=pytorch/pytorch:2.13.0-cuda13.0-cudnn9-runtime

# ---- wheel: the lensllm package, built once for both images ------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner ./runner
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- operator-venv: .[operator] in a virtual environment the final stage copies whole ----------
FROM ${PYTHON_IMAGE} AS operator-venv
# The wheel is bind-mounted, not copied: no layer keeps it.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -m venv /opt/lensllm \
    && /opt/lensllm/bin/pip install --no-cache-dir --disable-pip-version-check "$(ls /wheels/lensllm-*.whl)[operator]"

# ---- operator: `lensllm operator`, Python 3.11 + kopf, kubernetes, prometheus-client, no torch ---
FROM ${PYTHON_IMAGE} AS operator
# A named user, not only a uid: without POD_ID (the chart sets it) kopf asks for the user name.
RUN groupadd --gid 10001 lensllm \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin lensllm
COPY --from=operator-venv /opt/lensllm /opt/lensllm
ENV PATH=/opt/lensllm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that the kubelet can verify runAsNonRoot; the chart runs the pod as 10001 too.
USER 10001:10001
# /metrics and kopf's /healthz (LENSLLM_METRICS_PORT, LENSLLM_LIVENESS_PORT).
EXPOSE 8000 8080
ENTRYPOINT ["lensllm", "operator"]

# ---- runner: `lensllm run-trial`, fine-tunes one candidate on a GPU -------------------------------
# The official PyTorch image already holds torch 2.13.0 built for CUDA with cuDNN. pip keeps it:
# `torch==2.13.0` is satisfied by the installed build (a local label such as +cu130 matches), and
# the constraint written from the installed version makes the build fail rather than let any
# dependency swap in another multi-GB torch.
FROM ${PYTORCH_IMAGE} AS runner
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --disable-pip-version-check --constraint /tmp/torch-constraint.txt \
        "$(ls /wheels/lensllm-*.whl)[runner]" \
    && rm /tmp/torch-constraint.txt
# The trial Jobs run as uid/gid 1000 (operator/lensllm_operator/jobs.py). Some CUDA bases already
# have a user 1000 (Ubuntu 24.04's `ubuntu`): reuse it then.
RUN if ! getent group 1000 > /dev/null; then groupadd --gid 1000 lensllm; fi \
    && if ! getent passwd 1000 > /dev/null; then \
        useradd --uid 1000 --gid 1000 --no-create-home --home-dir /work --shell /usr/sbin/nologin lensllm; fi \
    && mkdir -p /work /cache/huggingface \
    && chown 1000:1000 /work /cache/huggingface
# Jobs mount a volume at HF_HOME (the model cache PVC or an emptyDir) and emptyDirs at /work and
# /tmp; the root filesystem is read-only, so every cache points at one of those.
ENV HF_HOME=/cache/huggingface \
    HOME=/work \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /work
USER 1000:1000
ENTRYPOINT ["lensllm"]
CMD ["run-trial", "--help"]
