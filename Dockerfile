# defense-server: the label-only gRPC server (`python -m defense serve`) with one model
# artifact baked in. Only the server's code (avc_common/, defense/) and its pinned dependency
# closure (requirements-server.txt + torch) are installed: no training stack.
#
#   docker build --build-arg ARTIFACT=runs/fmnist-trades/artifact -t defense-server .
#   docker run --rm -p 50051:50051 defense-server                  # extra args go to `serve`
#   python -m defense check crisp.yaml                             # the same command, checked locally
#
# Plaintext for anyone by default. Over a network, serve TLS to named callers, each with its own
# query budget, from files mounted read-only (docs/containers.md "TLS and callers", docs/grpc.md
# "Security"); arguments after the image replace CMD, so repeat --device, and give the probe TLS:
#   docker run --rm -p 50051:50051 -v "$PWD/certs:/certs:ro" \
#       --health-cmd 'python -m defense.health --target 127.0.0.1:50051 --tls-ca /certs/ca.pem --tls-server-name NAME' \
#       defense-server --device cpu --tls-cert /certs/server.pem --tls-key /certs/server.key \
#       --callers /certs/callers.json
#
# CPU by default: TORCH pins the CPU build, from PyTorch's CPU index (TORCH_INDEX).
#
# CUDA variant: same base image (a CUDA torch wheel brings its own CUDA runtime libraries;
# the host needs only the NVIDIA driver and the NVIDIA container toolkit). Install PyPI's
# default Linux torch build (the CUDA one, several GB), or a cuXYZ build from
# https://download.pytorch.org/whl/cuXYZ, and serve on the GPU:
#   docker build --build-arg TORCH=torch==2.13.0 --build-arg TORCH_INDEX= \
#       --build-arg ARTIFACT=runs/tiny-trades/artifact -t defense-server:cuda .
#   docker run --rm --gpus all -p 50051:50051 defense-server:cuda --device cuda
#
# Without a Docker engine, podman builds and runs this file unchanged: docs/containers.md
# (tests/test_container.py follows it).
FROM python:3.11-slim

ARG TORCH=torch==2.13.0+cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# PATH spelled out: the base image may not define one to extend (and python may live in
# /usr/bin or /usr/local/bin; the venv's python comes first either way).
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1

COPY requirements-server.txt /tmp/
# torch/test (C++ test binaries) and torch/include (headers for building extensions): ~150 MB unused here.
RUN python3 -m venv /opt/venv \
    && python -m pip install --no-cache-dir ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
        "$TORCH" -r /tmp/requirements-server.txt \
    && rm -rf /tmp/requirements-server.txt /opt/venv/lib/python3*/site-packages/torch/test \
        /opt/venv/lib/python3*/site-packages/torch/include \
    && groupadd --gid 10001 defense \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin defense

WORKDIR /opt/defense/app
# The common ground and the server; .dockerignore leaves out avc_common/data/ and defense/submission/
# (dataset readers and the submission check: PIL, PyYAML and dockerfile-parse, which serving does not need).
COPY avc_common/ avc_common/
COPY defense/ defense/

# The artifact folder (model.pt2 + manifest.json), relative to the build context; root-owned,
# so the server's user can read the model but not change it.
ARG ARTIFACT=artifact
COPY ${ARTIFACT} /opt/defense/model

USER 10001:10001
EXPOSE 50051
# defense.health imports grpc only (not torch): a probe costs ~0.3 s and ~45 MB. Plaintext: a TLS server needs
# --health-cmd with --tls-ca (see the top of this file). Health needs no token, even with --callers.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "defense.health", "--target", "127.0.0.1:50051", "--timeout-s", "5"]
# --host 0.0.0.0: inside the container, so that the published port reaches it (serve's own default is 127.0.0.1)
ENTRYPOINT ["python", "-m", "defense", "serve", "--model", "/opt/defense/model", "--host", "0.0.0.0", "--port", "50051"]
CMD ["--device", "cpu"]
