# SoundFoundry image: one image for the API (default command), the Temporal worker
# (`soundfoundry worker`) and migrations (`soundfoundry migrate`).
#
#   docker build -t soundfoundry:staging .
#
# Both stages use the same pinned base so the venv's interpreter links stay valid when
# it is copied across.

# ---------------------------------------------------------------------------------------
# Builder: a venv with the project and its runtime dependencies (no dev extras).
# ---------------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, exactly as uv.lock pins them (with their hashes), so editing the
# source reuses this (slow) layer. Every dependency ships manylinux wheels, so no
# compiler is needed.
COPY pyproject.toml ./
COPY uv.lock ./
RUN pip install uv==0.13.9 \
 && uv export --locked --no-emit-project --format requirements-txt -o /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt

# Then the project itself, non-editable; --no-deps because they are already in place.
COPY api ./api
COPY activities ./activities
COPY core ./core
COPY domain ./domain
COPY engines ./engines
COPY soundfoundry ./soundfoundry
COPY workflows ./workflows
COPY worker.py ./
RUN pip install --no-deps . && pip check

# ---------------------------------------------------------------------------------------
# Runtime: the venv plus the source tree, run as an unprivileged user.
# ---------------------------------------------------------------------------------------
FROM python:3.11.14-slim-bookworm AS runtime

# No `apt-get install libsndfile1`: the soundfile wheel (manylinux_2_28, x86_64 and
# aarch64) bundles its own libsndfile, linked statically against its codecs; only glibc
# is needed. The build fails below if that ever stops being true.

# PYTHONPATH=/app: core.migrate finds alembic.ini and migrations/ next to the `core`
# package it is imported from, so the copied source tree must win over the installed copy.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The cover PNGs (link previews) are drawn by resvg from the resvg-py wheel, which needs
# no system library; it does need a font for the title on the cover, and slim has none.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid so volume permissions and Kubernetes runAsUser stay predictable.
RUN groupadd --system --gid 10001 soundfoundry \
 && useradd --system --uid 10001 --gid soundfoundry --create-home \
      --home-dir /home/soundfoundry --shell /usr/sbin/nologin soundfoundry

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Owned by root and not writable by the app user: the code cannot be altered at run time.
COPY alembic.ini ./
COPY migrations ./migrations
COPY api ./api
COPY activities ./activities
COPY core ./core
COPY domain ./domain
COPY engines ./engines
COPY soundfoundry ./soundfoundry
COPY workflows ./workflows
COPY worker.py ./

# Fail the build, not the first render, if the audio stack, the cover renderer or the CLI
# cannot load.
RUN python -c "import soundfile, pyebur128, soxr, numpy; assert 'MP3' in soundfile.available_formats(); print('libsndfile', soundfile.__libsndfile_version__)" \
 && python -c "import resvg_py; png = resvg_py.svg_to_bytes(svg_string='<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"8\" height=\"8\"/>'); assert png[1:4] == b'PNG'" \
 && soundfoundry --help > /dev/null

USER 10001:10001

EXPOSE 8000

# No curl in slim images: the interpreter does the probe. /api/health answers 200 while
# the process serves; readiness (DB, Temporal) is reported in its body and at /ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=4)"]

CMD ["soundfoundry", "api", "--host", "0.0.0.0", "--port", "8000"]
