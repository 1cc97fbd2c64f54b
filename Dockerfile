# The shipper's image: kubectl apply -k deploy/daemonset/overlays/<name> runs it as a DaemonSet.
#   docker build -t shipper:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shipper ./shipper
# Wheels only in the final image: no sources, no pip cache, no build tools.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# The root file system is read-only in the DaemonSet: no bytecode written at run time (pip
# compiled it at install); log lines go out as they are written.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Non-root by default, for `docker run` and anything else that does not say otherwise. The
# DaemonSet runs it as uid 0 with every capability dropped, the one way to read the runtime's
# root-owned 0640 log files without CAP_DAC_READ_SEARCH, which a non-root process cannot be given
# (see the securityContext in deploy/daemonset/base/daemonset.yaml).
RUN useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin shipper
USER 65532:65532
# metrics.listen: /metrics, /healthz, /readyz
EXPOSE 2020
# The configuration is the ConfigMap the DaemonSet mounts at /etc/shipper.
ENTRYPOINT ["shipper", "run", "--config", "/etc/shipper/shipper.yaml"]
