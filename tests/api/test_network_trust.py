"""Network trust and response headers, each attack tried on the real stack.

Webhook targets whose DNS turns hostile between the check and the delivery, the dev
sign-in link, start-up refusals for unsafe settings, headers on user files and secrets,
and /metrics behind a token or on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager
from pydantic import SecretStr

from api.main import create_app
from tests.conftest import Stack, _assemble, base_settings, eventually
from tests.services import TemporalDevServer, free_port

SOUNDFOUNDRY = Path(sys.executable).parent / "soundfoundry"
REBINDING_HOST = "rebind.example"
PUBLIC_ADDRESS = "192.88.99.1"  # global on every Python; never connected to here
DEV_LOGIN_SECRET = "dev-login-secret-for-this-run-0123456789"


# --------------------------------------------------------------------------------------
# Webhooks: hostile DNS
# --------------------------------------------------------------------------------------
@dataclass
class CountingReceiver:
    """A loopback HTTP receiver that counts every TCP connection it accepts."""

    port: int = 0
    connections: int = 0
    request_lines: list[str] = field(default_factory=list)
    host_headers: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def counting_server(port: int = 0) -> AsyncIterator[CountingReceiver]:
    state = CountingReceiver()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        request = await reader.read(65536)
        lines = request.decode(errors="replace").split("\r\n")
        state.request_lines.append(lines[0])
        state.host_headers += [
            line[5:].strip() for line in lines if line.lower().startswith("host:")
        ]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    state.port = server.sockets[0].getsockname()[1]
    async with server:
        yield state


@pytest.fixture
def receiver_port() -> int:
    return free_port()


@pytest.fixture
def stack_overrides(receiver_port: int) -> dict[str, Any]:
    # Webhook URLs may name ports 80 and 443 only, unless allowed: the receiver's is.
    return {"webhook_allowed_ports": [receiver_port]}


@pytest_asyncio.fixture
async def loopback_receiver(receiver_port: int) -> AsyncIterator[CountingReceiver]:
    async with counting_server(receiver_port) as receiver:
        yield receiver


@dataclass
class HostileDns:
    """Answers for REBINDING_HOST in turn (the last one repeats); every other name goes to
    the real resolver. Installed as the event loop's getaddrinfo, which the API, the
    in-process worker and httpx all resolve through."""

    answers: list[list[str]]
    lookups: list[str] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host != REBINDING_HOST:
                return await real(host, port, *args, **kwargs)
            self.lookups.append(host)
            addresses = self.answers[min(len(self.lookups), len(self.answers)) - 1]
            return [_addrinfo(address, int(port)) for address in addresses]

        monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


def _addrinfo(address: str, port: int) -> tuple[Any, ...]:
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


async def _job_log(stack: Stack, job_id: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    response = await stack.http.get(f"/api/jobs/{job_id}/logs", headers=auth)
    entries: list[dict[str, Any]] = response.json()
    return entries


async def test_a_name_that_rebinds_to_loopback_after_the_check_is_never_connected(
    embedded_stack: Stack, loopback_receiver: CountingReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TTL 0: public when the API checks the URL, loopback from then on.
    dns = HostileDns(answers=[[PUBLIC_ADDRESS], ["127.0.0.1"]])
    dns.install(monkeypatch)
    _, auth = await embedded_stack.user(credits=20)
    url = f"http://{REBINDING_HOST}:{loopback_receiver.port}/hook"
    created = await embedded_stack.create_track(auth, duration_s=5, webhook_url=url)
    job_id = created["job_id"]
    assert (await embedded_stack.wait_for_job(job_id, auth))["status"] == "COMPLETE"

    async def refused() -> bool:
        return any(
            e["event"] == "webhook.failed" for e in await _job_log(embedded_stack, job_id, auth)
        )

    await eventually(refused, timeout_s=30, what="the refused delivery in the job log")
    log = await _job_log(embedded_stack, job_id, auth)
    failures = [e["message"] for e in log if e["event"].startswith("webhook")]
    assert len(failures) == 1, "a refused target is not retried"
    assert "resolves to a non-public address" in failures[0]
    assert all("127.0.0.1" not in (e["message"] or "") for e in log)
    assert len(dns.lookups) >= 2, "the worker resolved the name itself"
    await asyncio.sleep(1)  # anything late would have connected by now
    assert loopback_receiver.connections == 0


@pytest.mark.parametrize("stack_overrides", [{"webhook_allowed_hosts": [REBINDING_HOST]}])
async def test_the_delivery_connects_to_the_vetted_address_not_a_fresh_lookup(
    embedded_stack: Stack,
    loopback_receiver: CountingReceiver,
    monkeypatch: pytest.MonkeyPatch,
    stack_overrides: Any,
) -> None:
    # Exempt from the public check (like the test receivers) so the vetted address can be
    # loopback; any lookup after the API's and the worker's own answers elsewhere.
    dns = HostileDns(answers=[["127.0.0.1"], ["127.0.0.1"], [PUBLIC_ADDRESS]])
    dns.install(monkeypatch)
    url = f"http://{REBINDING_HOST}:{loopback_receiver.port}/hook"
    await _deliver_and_wait(embedded_stack, url)
    assert len(dns.lookups) == 2, "resolved once by the API and once by the delivery"
    assert loopback_receiver.request_lines == ["POST /hook HTTP/1.1"]
    assert loopback_receiver.host_headers == [f"{REBINDING_HOST}:{loopback_receiver.port}"]


@pytest.mark.parametrize(
    "answers",
    [
        [PUBLIC_ADDRESS, "127.0.0.1"],  # one answer public, another internal
        ["::127.0.0.1"],  # IPv4-compatible IPv6 (passes is_global on 3.11)
        ["::ffff:127.0.0.1"],  # IPv4-mapped
        ["64:ff9b::a9fe:a9fe"],  # NAT64 to 169.254.169.254 (passes is_global on 3.11)
        ["64:ff9b::a00:1"],  # NAT64 to 10.0.0.1
        ["2002:a00:1::1"],  # 6to4 around 10.0.0.1
        ["10.1.2.3"],
        ["169.254.169.254"],
    ],
)
async def test_internal_answers_are_refused_without_naming_them(
    embedded_stack: Stack,
    loopback_receiver: CountingReceiver,
    monkeypatch: pytest.MonkeyPatch,
    answers: list[str],
) -> None:
    HostileDns(answers=[answers]).install(monkeypatch)
    user_id, auth = await embedded_stack.user(credits=20)
    url = f"http://{REBINDING_HOST}:{loopback_receiver.port}/hook"
    response = await embedded_stack.http.post(
        "/api/tracks", json={"prompt": "hook", "duration_s": 5, "webhook_url": url}, headers=auth
    )
    assert response.status_code == 422, response.text
    assert "resolves to a non-public address" in response.text
    for address in answers:
        assert address not in response.text
    assert "10.0.0.1" not in response.text and "169.254" not in response.text
    assert await embedded_stack.credits(user_id) == 20
    assert loopback_receiver.connections == 0


async def _deliver_and_wait(stack: Stack, url: str) -> None:
    _, auth = await stack.user(credits=20)
    created = await stack.create_track(auth, duration_s=5, webhook_url=url)
    assert (await stack.wait_for_job(created["job_id"], auth))["status"] == "COMPLETE"

    async def delivered() -> bool:
        log = await _job_log(stack, created["job_id"], auth)
        return any(e["event"] == "webhook" for e in log)

    await eventually(delivered, timeout_s=30, what="the delivery")


@pytest_asyncio.fixture
async def egress_proxy() -> AsyncIterator[CountingReceiver]:
    """Stands in for the production egress proxy: answers 200 to what it is sent."""
    async with counting_server() as proxy:
        yield proxy


async def test_deliveries_go_through_the_egress_proxy_when_set(
    temporal_server: TemporalDevServer, tmp_path: Path, egress_proxy: CountingReceiver
) -> None:
    settings = base_settings(
        temporal_server,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sf.db'}",
        storage_local_dir=tmp_path / "objects",
        webhook_egress_proxy=f"http://127.0.0.1:{egress_proxy.port}",
        webhook_allowed_ports=[8443],
    )
    url = f"http://{PUBLIC_ADDRESS}:8443/hook"
    async for stack in _assemble(settings, temporal_server, True):
        await _deliver_and_wait(stack, url)
    # The proxy was asked for the original URL; nothing went to the address directly.
    assert egress_proxy.request_lines == [f"POST {url} HTTP/1.1"]


# --------------------------------------------------------------------------------------
# Start-up refusals: `soundfoundry api` / `worker` as an operator runs them
# --------------------------------------------------------------------------------------
def _bare_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(values)
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd away from the checkout, so its .env cannot configure the process.
    return subprocess.run(
        [str(SOUNDFOUNDRY), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("command", [["api", "--port", "0"], ["worker"]])
@pytest.mark.parametrize(
    ("secret_key", "reason"),
    [(None, "SECRET_KEY is the placeholder"), ("short-key", "SECRET_KEY is shorter than 32")],
)
def test_api_and_worker_refuse_a_weak_secret_key_outside_development(
    tmp_path: Path, command: list[str], secret_key: str | None, reason: str
) -> None:
    env = _bare_env(ENVIRONMENT="production", TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    if secret_key:
        env["SECRET_KEY"] = secret_key
    result = _run(command, env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr
    if secret_key:
        assert secret_key not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("host", "extra", "reason"),
    [
        ("0.0.0.0", {}, "DEV_AUTOLOGIN=true needs the API to listen on loopback"),
        ("127.0.0.1", {"CORS_ORIGINS": "*"}, "CORS_ORIGINS=*"),
    ],
)
def test_dev_autologin_refuses_to_start_off_loopback_or_with_any_origin(
    tmp_path: Path, host: str, extra: dict[str, str], reason: str
) -> None:
    env = _bare_env(DEV_AUTOLOGIN="true", DEV_LOGIN_SECRET=DEV_LOGIN_SECRET, **extra)
    result = _run(["api", "--host", host, "--port", str(free_port())], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert reason in result.stderr


# --------------------------------------------------------------------------------------
# DEV_AUTOLOGIN through a real listening API and a proxy on the same machine
# --------------------------------------------------------------------------------------
@pytest.fixture
def dev_api(embedded_stack: Stack, tmp_path: Path) -> Iterator[str]:
    """`soundfoundry api` on loopback with the dev sign-in on, from a dev-like folder."""
    (tmp_path / ".soundfoundry").mkdir(exist_ok=True)
    (tmp_path / ".soundfoundry" / "dev-token").write_text("sf_the_dev_users_token\n")
    env = {**embedded_stack.env, "DEV_AUTOLOGIN": "true", "DEV_LOGIN_SECRET": DEV_LOGIN_SECRET}
    env.pop("API_HOST", None)
    port = free_port()
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [str(SOUNDFOUNDRY), "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the API did not listen"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest_asyncio.fixture
async def same_machine_proxy(dev_api: str) -> AsyncIterator[str]:
    """A plain TCP relay on loopback (what socat, `ssh -R` or `kubectl port-forward` do):
    the API sees a loopback peer and whatever Host the far client sent."""
    target_port = int(dev_api.rsplit(":", 1)[1])

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, upstream_w), pipe(upstream_r, client_w))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_dev_autologin_needs_the_printed_secret_even_from_loopback(
    dev_api: str, same_machine_proxy: str
) -> None:
    async with httpx.AsyncClient(base_url=dev_api, timeout=10) as browser:
        # Loopback peer and loopback Host, no secret: no token.
        assert "sf_the_dev_users_token" not in (await browser.get("/create")).text
        wrong = await browser.get("/?login=not-the-secret")
        assert wrong.status_code == 307 and "set-cookie" not in wrong.headers
        # The link `soundfoundry dev` prints: one exchange, then the pages carry the token.
        signin = await browser.get(f"/?login={DEV_LOGIN_SECRET}")
        assert signin.status_code == 303 and signin.headers["location"] == "/create"
        assert "HttpOnly" in signin.headers["set-cookie"]
        page = await browser.get("/create")
        assert '<meta name="sf-dev-token" content="sf_the_dev_users_token">' in page.text
        assert page.headers["cache-control"] == "no-store"

    # Someone reaching a proxy on this machine: loopback peer, loopback Host, no secret.
    async with httpx.AsyncClient(base_url=same_machine_proxy, timeout=10) as stranger:
        for path in ("/", "/create", "/signin", "/?login=", "/?login=%C3%A9"):
            response = await stranger.get(path, follow_redirects=True)
            assert response.status_code == 200, path
            assert "sf_the_dev_users_token" not in response.text, path
            assert "sf-dev-token" not in response.text, path
        proxied = await stranger.get("/create", headers={"X-Forwarded-For": "203.0.113.9"})
        assert "sf-dev-token" not in proxied.text


# --------------------------------------------------------------------------------------
# User files and secrets: headers
# --------------------------------------------------------------------------------------
SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
    b'<rect width="8" height="8"/></svg>'
)


async def test_user_files_are_sandboxed_and_svg_is_an_attachment(embedded_stack: Stack) -> None:
    storage = embedded_stack.storage
    key = "covers/someone/cover.svg"
    await storage.put_bytes(key, SVG, "image/svg+xml")
    url = httpx.URL(await storage.signed_url(key, 60))
    path = url.raw_path.decode()

    opened = await embedded_stack.http.get(path)
    assert opened.status_code == 200 and opened.content == SVG
    csp = opened.headers["content-security-policy"]
    assert csp == "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    assert opened.headers["x-content-type-options"] == "nosniff"
    assert opened.headers["content-disposition"].startswith("attachment")

    # `inline` is part of the signature (tests/api/test_signed_links.py): signed for it.
    shown_url = httpx.URL(await storage.signed_url(key, 60, inline=True))
    shown = await embedded_stack.http.get(shown_url.raw_path.decode())
    assert shown.status_code == 200
    assert shown.headers["content-disposition"].startswith("inline")
    assert shown.headers["content-security-policy"] == csp

    audio_key = "tracks/someone/track.wav"
    await storage.put_bytes(audio_key, b"RIFF0000WAVE", "audio/wav")
    audio = await embedded_stack.http.get(
        httpx.URL(await storage.signed_url(audio_key, 60)).raw_path.decode()
    )
    assert audio.status_code == 200 and audio.headers["content-security-policy"] == csp


@pytest.mark.parametrize(
    "query",
    [
        "expires={expires}&sig=" + "é" * 64,
        "expires={expires}&sig=" + "%FF" * 64,
        "expires={expires}&sig=" + "Z" * 64,
        "expires={expires}&sig=short",
        "expires=" + "9" * 400 + "&sig={sig}",
        "expires=-1&sig={sig}",
    ],
)
async def test_malformed_signatures_answer_4xx(embedded_stack: Stack, query: str) -> None:
    key = "covers/someone/sig.svg"
    await embedded_stack.storage.put_bytes(key, SVG, "image/svg+xml")
    signed = httpx.URL(await embedded_stack.storage.signed_url(key, 60))
    params = dict(signed.params)
    filled = query.format(expires=params["expires"], sig=params["sig"])
    response = await embedded_stack.http.get(f"{signed.path}?{filled}")
    assert 400 <= response.status_code < 500, (response.status_code, response.text)


@pytest.mark.parametrize("stack_overrides", [{"hsts_seconds": 31536000}])
async def test_hsts_when_set_and_no_store_on_secrets(
    embedded_stack: Stack, stack_overrides: Any
) -> None:
    http = embedded_stack.http
    for path in ("/api/health", "/signin"):
        response = await http.get(path)
        assert response.headers["strict-transport-security"] == "max-age=31536000", path
    _, auth = await embedded_stack.user()
    secret = await http.get("/api/me/webhook", headers=auth)
    assert secret.headers["cache-control"] == "no-store"
    rotated = await http.post("/api/me/webhook/rotate", headers=auth)
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"


async def test_no_hsts_unless_set(embedded_stack: Stack) -> None:
    assert "strict-transport-security" not in (await embedded_stack.http.get("/api/health")).headers


# --------------------------------------------------------------------------------------
# /metrics: a bearer token, its own port, or (by default) loopback clients only
# --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def client_from(
    settings: Any, address: str, **updates: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a fresh app whose requests come from `address`."""
    app = create_app(settings.model_copy(update=updates))
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as http,
    ):
        yield http


async def test_metrics_answer_loopback_only_by_default(embedded_stack: Stack) -> None:
    settings = embedded_stack.settings
    for address in ("203.0.113.9", "10.0.0.7", "2001:db8::1"):
        async with client_from(settings, address) as remote:
            refused = await remote.get("/metrics")
            assert refused.status_code == 403, address
            assert "METRICS_TOKEN" in refused.text and "http_requests_total" not in refused.text
    for address in ("127.0.0.1", "::1"):
        async with client_from(settings, address) as local:
            scraped = await local.get("/metrics")
            assert scraped.status_code == 200 and "http_requests_total" in scraped.text
            # Through a proxy on this host, the loopback peer is the proxy, not the client.
            proxied = await local.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
            assert proxied.status_code == 403


async def test_metrics_public_when_asked(embedded_stack: Stack) -> None:
    async with client_from(embedded_stack.settings, "203.0.113.9", metrics_public=True) as remote:
        assert (await remote.get("/metrics")).status_code == 200


async def test_a_metrics_token_is_needed_from_loopback_too(embedded_stack: Stack) -> None:
    token = "metrics-scrape-token-0123456789"
    settings = embedded_stack.settings
    async with client_from(settings, "127.0.0.1", metrics_token=SecretStr(token)) as local:
        assert (await local.get("/metrics")).status_code == 401
        authorized = {"Authorization": f"Bearer {token}"}
        assert (await local.get("/metrics", headers=authorized)).status_code == 200


@pytest.mark.parametrize("stack_overrides", [{"metrics_token": "metrics-scrape-token-0123456789"}])
async def test_metrics_behind_a_token(embedded_stack: Stack, stack_overrides: Any) -> None:
    http = embedded_stack.http
    assert (await http.get("/metrics")).status_code == 401
    wrong = await http.get("/metrics", headers={b"Authorization": "Bearer nope-é".encode()})
    assert wrong.status_code == 401
    scraped = await http.get(
        "/metrics", headers={"Authorization": "Bearer metrics-scrape-token-0123456789"}
    )
    assert scraped.status_code == 200 and "http_requests_total" in scraped.text


async def test_metrics_on_their_own_port(embedded_stack: Stack) -> None:
    port = free_port()
    settings = embedded_stack.settings.model_copy(
        update={"api_metrics_port": port, "api_host": "127.0.0.1"}
    )
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        assert (await http.get("/metrics")).status_code == 404
        async with httpx.AsyncClient(timeout=5) as scraper:
            scraped = await scraper.get(f"http://127.0.0.1:{port}/metrics")
        assert scraped.status_code == 200 and "http_requests_total" in scraped.text
    with pytest.raises(httpx.ConnectError):  # stopped with the app
        async with httpx.AsyncClient(timeout=2) as scraper:
            await scraper.get(f"http://127.0.0.1:{port}/metrics")
