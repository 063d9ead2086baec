"""A real browser against the real product.

Debian's Chromium (/usr/bin/chromium, apt package `chromium`, installed by
`scripts/setup.sh --test`) driven by Playwright for Python. Nothing downloads a browser:
Playwright is only given the path of the one on the machine.

`web` is the embedded stack (SQLite, local files, Temporal dev server, a real worker)
with the API served by uvicorn on a loopback port, so the browser talks HTTP to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from api.main import create_app
from core.contracts import JobStatus
from tests.conftest import PROJECT_ROOT, Stack, _assemble, base_settings
from tests.live_server import LiveServer, bound_socket
from tests.services import TemporalDevServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # The test presses play itself; no user-gesture rule to satisfy, no speakers needed.
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
_saved: list[Path] = []
_measurements: dict[str, str] = {}


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    _saved.append(path)
    return path


def record(name: str, value: str) -> None:
    """A measurement to print at the end of the run (and keep in test-artifacts/)."""
    _measurements[name] = value
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "web-ui-measurements.json").write_text(json.dumps(_measurements, indent=2))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (_saved or _measurements):
        return
    terminalreporter.section("web UI")
    if _saved:
        terminalreporter.write_line(f"screenshots in {SCREENSHOTS}:")
        for path in dict.fromkeys(_saved):
            terminalreporter.write_line(f"  {path.name}")
    for name, value in _measurements.items():
        terminalreporter.write_line(f"{name}: {value}")


@dataclass
class Web:
    """The stack plus the URL a browser reaches it at."""

    stack: Stack
    url: str
    http: httpx.AsyncClient
    tokens: dict[uuid.UUID, str] = field(default_factory=dict)

    async def user(self, credits: int = 100) -> tuple[uuid.UUID, str]:
        user_id, auth = await self.stack.user(credits=credits)
        token = auth["Authorization"].removeprefix("Bearer ")
        self.tokens[user_id] = token
        return user_id, token

    async def finished_track(self, token: str, **body: Any) -> dict[str, Any]:
        """A track made through the API (not the page), waited for until COMPLETE."""
        auth = {"Authorization": f"Bearer {token}"}
        created = await self.stack.create_track(auth, **body)
        job = await self.stack.wait_for_job(created["job_id"], auth)
        assert job["status"] == JobStatus.COMPLETE, job
        return created


@pytest.fixture
def web_overrides() -> dict[str, Any]:
    return {}


@pytest_asyncio.fixture
async def web(
    tmp_path: Path, temporal_server: TemporalDevServer, web_overrides: dict[str, Any]
) -> AsyncIterator[Web]:
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings = base_settings(
        temporal_server,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'sf.db'}",
        storage_backend="local",
        storage_local_dir=tmp_path / "objects",
        public_base_url=url,
        **web_overrides,
    )
    async for stack in _assemble(settings, temporal_server, True):
        server = LiveServer(create_app(settings), sock)
        await asyncio.to_thread(server.__enter__)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                yield Web(stack=stack, url=url, http=http)
        finally:
            await asyncio.to_thread(server.__exit__, None, None, None)


def require_chromium() -> None:
    if shutil.which(str(CHROMIUM)) is None:
        pytest.fail(
            f"{CHROMIUM} not found: run `scripts/setup.sh --test`, which installs Debian's"
            " `chromium` package (the browser tests never download one)",
            pytrace=False,
        )


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class PageProblems:
    """Console errors and CSP violations seen by a context's pages."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def watch(self, page: Any) -> None:
        def on_console(message: Any) -> None:
            if message.type == "error":
                self.errors.append(message.text)

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def csp_violations(self) -> list[str]:
        return [e for e in self.errors if re.search("Content Security Policy", e, re.I)]

    def script_errors(self) -> list[str]:
        return [e for e in self.errors if e.startswith("uncaught")]


@dataclass
class Browsing:
    context: Any
    page: Any
    problems: PageProblems


async def open_context(browser: Any, **options: Any) -> Browsing:
    context = await browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(15_000)
    problems = PageProblems()
    context.on("page", problems.watch)
    page = await context.new_page()
    return Browsing(context=context, page=page, problems=problems)


@pytest_asyncio.fixture
async def browsing(browser: Any) -> AsyncIterator[Browsing]:
    """A fresh browser context (own localStorage) with one page, 1280 by 800."""
    opened = await open_context(browser, viewport={"width": 1280, "height": 800})
    try:
        yield opened
        assert opened.problems.csp_violations() == []
        assert opened.problems.script_errors() == []
    finally:
        await opened.context.close()


async def sign_in(page: Any, web: Web, token: str, next_path: str = "/create") -> None:
    """What a person does: open the sign-in page and paste the token."""
    await page.goto(f"{web.url}/signin?next={next_path}")
    await page.fill("#token", token)
    await page.click("#signin-form button[type=submit]")
    await page.wait_for_url(f"{web.url}{next_path}")


async def until(page: Any, expression: str, wait_ms: float = 15_000) -> None:
    """Wait until a JS expression is truthy in the page.

    Passed as a function, not a bare expression: Playwright evaluates bare expressions
    with eval(), which the pages' CSP (script-src 'self') rightly refuses.
    """
    await page.wait_for_function(f"() => ({expression})", timeout=wait_ms)
