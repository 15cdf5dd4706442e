# The one Mailsluice image: ingest, delivery workers, stream processors and the operator are
# subcommands of `mailsluice` (e.g. `docker run IMAGE delivery --pool default`).
#
#   docker build -t mailsluice:dev .
#
# Debian's base and Debian's Python, so the image can also be made without a registry:
# `python3 scripts/image_build.py build` makes the base with mmdebstrap and builds this file
# with buildah. Behind a TLS-intercepting proxy give pip its CA bundle as a build secret:
# `--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`.
FROM docker.io/library/debian:bookworm-slim AS debian-python
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The requirements (build system and runtime dependencies) read from pyproject.toml: the
# dependency layer below is reused while they stay the same, whatever else the file changes.
FROM debian-python AS requirements
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb")); \
print("\n".join(p["build-system"]["requires"] + p["project"]["dependencies"]))' \
    > /requirements.txt

FROM debian-python AS build
# SOURCE_DATE_EPOCH makes pip write hash-checked .pyc files, still valid when a reproducible
# build (`buildah build --timestamp 0`) resets every file's mtime.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 SOURCE_DATE_EPOCH=0
# The dependencies first: a change to the code alone re-runs only the last step. The virtualenv
# is copied whole into the runtime stage: no compilers or caches there.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 -m venv /opt/mailsluice \
 && /opt/mailsluice/bin/pip install -r /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
COPY operator ./operator
RUN /opt/mailsluice/bin/pip install --no-deps --no-build-isolation --no-cache-dir .

FROM docker.io/library/debian:bookworm-slim
LABEL org.opencontainers.image.title="mailsluice" \
      org.opencontainers.image.description="Kubernetes-native MTA for bulk and transactional senders" \
      org.opencontainers.image.licenses="Apache-2.0"
# MALLOC_ARENA_MAX: glibc gives every thread that allocates a malloc arena of its own; the few
# threads of a service (name resolution, the executor) added 20 MB to a delivery worker's peak
# RSS (159 -> 139 MB draining 15,000 messages, scripts/bench_scale.py).
ENV PATH=/opt/mailsluice/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2
# Fixed numeric ids so Kubernetes can check runAsNonRoot (the chart uses 10001). CA certificates
# for TLS to MX hosts and webhook endpoints. SOURCE_DATE_EPOCH: Debian compiles the standard
# library's .pyc files hash-checked too (see the build stage). Logs and ldconfig's inode cache
# go, so that the same packages give the same layer.
RUN export SOURCE_DATE_EPOCH=0 \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    /var/cache/ldconfig/aux-cache \
 && groupadd --system --gid 10001 mailsluice \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mailsluice
COPY --from=build /opt/mailsluice /opt/mailsluice
USER 10001:10001
# SMTP (ingest, unprivileged port) and the /metrics, /healthz, /readyz ports.
EXPOSE 2525 9101 9102 8080
ENTRYPOINT ["mailsluice"]
CMD ["--help"]
