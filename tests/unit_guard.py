"""The unit tier's fence: a test marked `unit` runs with no service at all.

`scripts/test --unit` (`pytest -m unit`) must work on a fresh `uv sync`: no Postgres, no
Temporal, no S3 server, no browser, no Go build. A test gets into the tier only by an
explicit `@pytest.mark.unit` (or `pytestmark`), and this plugin keeps it honest in every
run, CI's full run included:

- at collection, a unit test that asks for a service fixture (directly or through
  another fixture) stops the run, naming the test and the fixture;
- while a unit test runs, setting up a service fixture (e.g. through
  `request.getfixturevalue`), starting a service's program, or connecting to a server
  outside this process (another host, or a loopback port or socket another process
  listens on) fails the test, even if the code under test swallows the error.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import subprocess
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

# Fixtures that start or reach a service (tests/fixtures_services.py, tests/conftest.py,
# tests/e2e/browser/conftest.py, tests/api/test_api_faults.py).
SERVICE_FIXTURES = frozenset(
    {
        "pg_cluster",
        "pg_database_url",
        "private_pg",
        "s3_gateway",
        "s3_bucket",
        "temporal_server",
        "stack",
        "embedded_stack",
        "browser",
    }
)

# Programs a unit test may not start: the services, the browser (Playwright's driver
# runs on node), the Go tool chain, the baseline's Redis and promtool.
SERVICE_PROGRAMS = frozenset(
    {
        "postgres",
        "initdb",
        "pg_ctl",
        "pg_ctlcluster",
        "temporal",
        "versitygw",
        "chromium",
        "chrome",
        "headless_shell",
        "node",
        "playwright",
        "go",
        "redis-server",
        "promtool",
    }
)


class UnitTierViolation(BaseException):
    """A unit test touched a service. A BaseException, so `except Exception` in the code
    under test cannot hide it (the test fails in any case: see `_fail_if_violated`)."""


_unit_item: pytest.Item | None = None
_violations: dict[str, list[str]] = {}


def is_unit(item: pytest.Item) -> bool:
    return item.get_closest_marker("unit") is not None


def service_fixtures_of(item: pytest.Item) -> list[str]:
    return sorted(SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())))


def program_of(args: Any, executable: Any, shell: bool) -> list[str]:
    """The names of the programs a Popen call would start (a shell line: every word)."""
    if executable is not None:
        candidates: Iterable[Any] = [executable]
    elif isinstance(args, str | bytes | os.PathLike):
        command = os.fsdecode(args)
        candidates = shlex.split(command) if shell else [command]
    else:
        candidates = list(args)[:1]
    names = [os.path.basename(os.fsdecode(candidate)) for candidate in candidates]
    # versioned binaries from the per-machine cache: temporal-1.5.1, versitygw-1.7.0
    return [re.sub(r"-\d[\w.]*$", "", name) for name in names]


def violate(what: str) -> None:
    if _unit_item is None:
        return
    _violations.setdefault(_unit_item.nodeid, []).append(what)
    raise UnitTierViolation(f"unit test {_unit_item.nodeid} {what}; mark it otherwise")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    offenders = [
        f"{item.nodeid} uses {', '.join(used)}"
        for item in items
        if is_unit(item) and (used := service_fixtures_of(item))
    ]
    if offenders:
        raise pytest.UsageError(
            "unit tests may not use service fixtures (drop the `unit` mark or the fixture):\n  "
            + "\n  ".join(offenders)
        )


def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> None:
    if fixturedef.argname in SERVICE_FIXTURES:
        violate(f"set up the service fixture '{fixturedef.argname}'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    global _unit_item
    _unit_item = item if is_unit(item) else None
    try:
        yield
    finally:
        _unit_item = None
        _violations.pop(item.nodeid, None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    # each phase (setup, call, teardown) answers for what it did
    seen = _violations.pop(item.nodeid, None)
    if seen and report.passed:
        report.outcome = "failed"
        report.longrepr = "unit tier violated (the error was swallowed):\n  " + "\n  ".join(seen)


def _own_socket_inodes() -> set[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    return inodes


def _listeners(family: int, address: Any) -> list[str]:
    """The inodes of every socket on this machine listening at `address`."""
    if family == socket.AF_UNIX:
        path = os.fsdecode(address) if isinstance(address, str | bytes) else None
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000: accepting connections
        rows = map(str.split, Path("/proc/self/net/unix").read_text().splitlines()[1:])
        return [r[6] for r in rows if len(r) > 7 and int(r[3], 16) & 0x10000 and r[7] == path]
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        # sl local_address rem_address st ... inode (column 9); state 0A: LISTEN
        for row in map(str.split, Path(table).read_text().splitlines()[1:]):
            if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == address[1]:
                found.append(row[9])
    return found


def may_connect(family: int, address: Any) -> bool:
    """A unit test may reach a server of its own process (a fake in a thread; read from
    /proc, so servers that uvloop bound count too) or knock on a loopback port nobody
    listens on (connection refused), never another process's server or another host."""
    if family != socket.AF_UNIX:
        try:
            if not ipaddress.ip_address(address[0]).is_loopback:
                return False
        except ValueError:  # a name, not an address: nothing here connects that way
            return False
    listeners = _listeners(family, address)
    return not listeners or bool(set(listeners) & _own_socket_inodes())


def _install() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_popen_init = subprocess.Popen.__init__

    def check(sock: socket.socket, address: Any) -> None:
        if _unit_item is None or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
            socket.AF_UNIX,
        ):
            return
        if not may_connect(sock.family, address):
            violate(f"connected to {address!r}, a server outside this process")

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def popen_init(self: subprocess.Popen[Any], args: Any, *more: Any, **kwargs: Any) -> None:
        if _unit_item is not None:
            # (everyone, asyncio included, passes executable and shell by keyword)
            shell = bool(kwargs.get("shell"))
            for name in program_of(args, kwargs.get("executable"), shell):
                if name in SERVICE_PROGRAMS:
                    violate(f"started {name}")
        real_popen_init(self, args, *more, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign, assignment]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign, assignment]
    subprocess.Popen.__init__ = popen_init  # type: ignore[method-assign, assignment]


def pytest_configure() -> None:
    if not getattr(socket.socket.connect, "_unit_guard", False):
        _install()
        socket.socket.connect._unit_guard = True  # type: ignore[attr-defined]
