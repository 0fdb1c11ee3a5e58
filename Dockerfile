# vsop: the node agent / controller image. Built from the wheel, so the image holds
# exactly what `pip install vsop` would, plus the tools a person wants inside the pod.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY crds ./crds
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim-bookworm
# iptables ships both backends (iptables-legacy and iptables-nft); vsop detects which
# one the host uses. ipset and ipvsadm are for humans debugging inside the pod.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ipset ipvsadm iproute2 conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
USER 0
ENTRYPOINT ["vsop"]
CMD ["agent"]
