"""The unit tier's fence (tests/unit_guard.py) stops a unit test that touches a service.

Each case runs a small suite in a pytest of its own (a subprocess, so the fence's hooks
and patches there are not this run's) and reads its outcome.
"""

from __future__ import annotations

import socket
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit_guard import program_of

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
import pytest

pytest_plugins = ["tests.unit_guard"]

@pytest.fixture(scope="session")
def s3_gateway(tmp_path_factory):
    # stands in for the real one: records that it was set up
    (tmp_path_factory.getbasetemp() / "s3-started").write_text("yes")
    return "gateway"

@pytest.fixture
def pg_database_url():
    return "postgresql://"

@pytest.fixture
def settings_for_tests(pg_database_url):
    return {"DATABASE_URL": pg_database_url}
"""

INI = """[pytest]
markers =
  unit: unit tier
addopts = --strict-markers -p no:cacheprovider
"""


@pytest.fixture
def other_process_server() -> Iterator[int]:
    """A loopback server in this process, which is another process for the inner run."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:  # closed
            return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for connection in accepted:
        connection.close()


def run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, **files: str
) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    # the inner suites need only the fence: no plugin of this environment (a faster start)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(**files)
    pytester.makeini(INI)
    return pytester.runpytest_subprocess("-q", "-rfE")


def test_a_unit_test_asking_for_a_service_fixture_stops_the_collection(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = run(
        pytester,
        monkeypatch,
        test_sample="""
import pytest

@pytest.mark.unit
def test_through_another_fixture(settings_for_tests):
    pass

def test_outside_the_tier(settings_for_tests):
    pass
""",
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*unit tests may not use service fixtures*",
            "*test_through_another_fixture uses pg_database_url*",
        ]
    )
    assert "test_outside_the_tier" not in result.stderr.str()


def test_a_unit_test_that_reaches_a_service_at_run_time_fails(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, other_process_server: int
) -> None:
    program = pytester.path / "bin" / "postgres"
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\necho ran > {pytester.path / 'postgres-ran'}\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    result = run(
        pytester,
        monkeypatch,
        test_sample=f"""
import socket
import subprocess
import pytest

pytestmark = pytest.mark.unit

def test_fixture_by_name(request):
    request.getfixturevalue("s3_gateway")

def test_starts_postgres():
    subprocess.run([{str(program)!r}, "-D", "data"], check=False)

def test_connects_to_another_process():
    socket.create_connection(("127.0.0.1", {other_process_server}), timeout=2).close()

def test_swallows_the_error():
    try:
        socket.create_connection(("127.0.0.1", {other_process_server}), timeout=2).close()
    except BaseException:
        pass

def test_connects_to_another_host():
    socket.create_connection(("192.0.2.1", 5432), timeout=2).close()
""",
    )
    result.assert_outcomes(failed=5)
    port = other_process_server
    result.stdout.fnmatch_lines_random(
        [
            "*test_fixture_by_name*set up the service fixture 's3_gateway'*",
            "*test_starts_postgres*started postgres*",
            f"*test_connects_to_another_process*connected to ('127.0.0.1', {port})*",
            "FAILED test_sample.py::test_swallows_the_error - unit tier violated*",
            "unit tier violated (the error was swallowed):",
            "*test_connects_to_another_host*connected to ('192.0.2.1', 5432)*",
        ]
    )
    assert not (pytester.path / "postgres-ran").exists()
    assert not list(pytester.path.glob("**/s3-started"))


def test_own_servers_refused_ports_and_other_tiers_are_left_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, other_process_server: int
) -> None:
    result = run(
        pytester,
        monkeypatch,
        test_sample=f"""
import socket
import subprocess
import sys
import threading
import pytest

@pytest.mark.unit
def test_a_server_of_its_own():
    server = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    socket.create_connection(server.getsockname(), timeout=2).close()
    server.close()

@pytest.mark.unit
def test_a_port_nobody_listens_on():
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)

@pytest.mark.unit
def test_a_python_child_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def test_outside_the_tier_reaches_services(request):
    request.getfixturevalue("s3_gateway")
    socket.create_connection(("127.0.0.1", {other_process_server}), timeout=2).close()
""",
    )
    result.assert_outcomes(passed=4)


@pytest.mark.parametrize(
    ("args", "kwargs", "names"),
    [
        (["/home/ci/.cache/soundfoundry/bin/temporal-1.5.1", "server"], {}, ["temporal"]),
        (["versitygw-1.7.0"], {}, ["versitygw"]),
        (
            "/usr/lib/postgresql/15/bin/pg_ctl -D x start",
            {"shell": True},
            ["pg_ctl", "-D", "x", "start"],
        ),
        (["sh"], {"executable": "/usr/bin/chromium"}, ["chromium"]),
        ([sys.executable, "-c", "pass"], {}, [Path(sys.executable).name]),
    ],
)
def test_the_programs_a_popen_would_start(
    args: object, kwargs: dict[str, object], names: list[str]
) -> None:
    shell = bool(kwargs.get("shell"))
    assert program_of(args, kwargs.get("executable"), shell) == names
