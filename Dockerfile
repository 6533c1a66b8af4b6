# syntax=docker/dockerfile:1
# modelstack's app server: uWSGI workers running the Flask app, started by the same command,
# with the same deploy/uwsgi/uwsgi.ini and the same pinned requirements.txt as on a VM
# (deploy/systemd/modelstack.service). nginx runs in a container of its own (docker-compose.yml)
# and reaches the workers through the unix socket in /run/modelstack; this image opens no port.
#
#   docker build -t modelstack .          or simply: docker compose up --build
#
# The base image is pinned by tag only. Pin its digest as well where the registry is reachable
# (`docker buildx imagetools inspect python:3.11-slim-bookworm` prints it; then write
# FROM python:3.11-slim-bookworm@sha256:...): it was written on a machine without one.

# -- builder: compile uWSGI and install the pinned requirements into a venv ----------------------
FROM python:3.11-slim-bookworm AS builder

# uWSGI is compiled from source (PyPI has no wheel): a C compiler and libc's headers. No -dev
# package of an optional uWSGI feature (SSL, PCRE routing, XML, zlib) is installed, so uWSGI links
# only libc and libpython, which the runtime image has; deploy/uwsgi/uwsgi.ini uses none of them.
# Versions come with the pinned Debian release (bookworm); Debian's security updates replace
# exact package versions in its archive, so pinning them would break rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# The venv sits at the same path in both stages: its scripts name their interpreter by path.
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements.txt

# -- runtime: the venv, the app, the model repository, and nothing to build with ---------------
FROM python:3.11-slim-bookworm

# A numeric user without a shell or home. /run/modelstack (RUN_DIR) is its own: docker-compose.yml
# mounts a volume there that the nginx container shares for the socket. /etc/nginx/conf.d is where
# the compose `render` service writes nginx's site; a new volume takes this folder's owner.
RUN groupadd --system --gid 10001 modelstack \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin modelstack \
    && install -d -o 10001 -g 10001 -m 0755 /run/modelstack /etc/nginx/conf.d

COPY --from=builder /opt/venv /opt/venv
# Fails the build here, not at start-up, if uWSGI needs a library this image lacks.
RUN ["/opt/venv/bin/uwsgi", "--version"]

# The checkout's layout (deploy/stack.py finds everything relative to itself), owned by root
# and read-only to the service, as on a VM.
WORKDIR /opt/modelstack
COPY deploy/stack.py deploy/stack.py
COPY deploy/uwsgi/uwsgi.ini deploy/uwsgi/uwsgi.ini
COPY deploy/nginx/ deploy/nginx/
COPY deploy/docker/healthcheck.py deploy/docker/healthcheck.py
COPY models/ models/
COPY app/ app/

# The paths the systemd unit fixes on a VM, and what deploy/env.example sets there.
# Every other knob (deploy/env.example) keeps its default unless docker-compose.yml sets it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RUN_DIR=/run/modelstack \
    APP_SOCKET=/run/modelstack/uwsgi.sock \
    ORT_DISABLE_TELEMETRY=1

USER 10001:10001

# uwsgi.ini turns SIGTERM into a graceful stop (in-flight requests finish; die-on-term plus
# hook-master-start = unix_signal:15 gracefully_kill_them_all). Give it the time: docker-compose.yml
# sets stop_grace_period above HARAKIRI and WORKER_RELOAD_MERCY.
STOPSIGNAL SIGTERM

# Ready means /readyz answers 200: every model loaded and warmed. Asked over the uwsgi socket,
# since uWSGI speaks no HTTP here (deploy/docker/healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --start-interval=2s --retries=3 \
    CMD ["python", "deploy/docker/healthcheck.py"]

# The command the systemd unit and `deploy/stack.py run` run: prepares RUN_DIR, then execs uWSGI
# (PID 1: it gets the stop signal and reaps its workers).
CMD ["python", "deploy/stack.py", "uwsgi"]
