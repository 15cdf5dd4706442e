# The one Mailsluice image: ingest, delivery workers, stream processors and the operator are
# subcommands of `mailsluice` (e.g. `docker run IMAGE delivery --pool default`).
#
#   docker build -t mailsluice:dev .
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
# A virtualenv copied whole into the runtime stage: no compilers or caches there.
RUN python -m venv /opt/mailsluice \
 && /opt/mailsluice/bin/pip install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="mailsluice" \
      org.opencontainers.image.description="Kubernetes-native MTA for bulk and transactional senders" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/mailsluice/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Fixed numeric ids so Kubernetes can check runAsNonRoot (the chart uses 10001).
RUN groupadd --system --gid 10001 mailsluice \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mailsluice
COPY --from=build /opt/mailsluice /opt/mailsluice
USER 10001:10001
# SMTP (ingest, unprivileged port) and the /metrics, /healthz, /readyz ports.
EXPOSE 2525 9101 9102 8080
ENTRYPOINT ["mailsluice"]
CMD ["--help"]
