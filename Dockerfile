# vsop: the image of the in-cluster node agent (DaemonSet) and controller (Deployment),
# and of the host tools. Built from the wheel, so it holds exactly what `pip install vsop`
# would, plus the tools a person wants inside the agent's pod.
#   docker build -t REGISTRY/vsop:TAG .
# Without a registry: `make image` builds the same file with buildah on a base made from
# Debian's packages (image/base.sh), passing --build-arg BASE=localhost/vsop-base:<hash>.
#   vsop agent          (DaemonSet; deploy/agent.yaml)     vsop controller   (deploy/controller.yaml)
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY crds ./crds
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM ${BASE}
# iptables ships both backends (iptables-legacy and iptables-nft, with their -save and
# -restore); vsop detects which one the host uses, as kube-proxy's iptables-wrappers do.
# ipset, ipvsadm, iproute2 and conntrack are for humans debugging inside the pod.
# keepalived (Debian's 2.2.7) is for keepalived mode: the agent checks each candidate
# configuration with `keepalived -t`, and deploy/keepalived runs it from this image.
# bird2 (Debian's 2.0.12) is for announce: bgp: the agent checks each bird.conf with
# `bird -p` and reconfigures BIRD with `birdc`; deploy/bgp runs BIRD from this image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset ipvsadm iproute2 conntrack keepalived bird2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
# Logs go straight to the container runtime; nothing is written under a read-only root.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="vsop" \
      org.opencontainers.image.description="VirtualService operator: declared VIPs reconciled into Linux IPVS, ipset and iptables"
# The agent runs as root with only NET_ADMIN and NET_RAW (deploy/agent.yaml);
# the controller runs as a non-root user (deploy/controller.yaml).
USER 0
ENTRYPOINT ["vsop"]
CMD ["agent"]
