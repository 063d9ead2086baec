"""/docs and /redoc render in Chromium from this app alone: no CDN, no console errors."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.browser.conftest import Browsing, Web, screenshot_path, until

pytestmark = pytest.mark.timeout(120)


async def _offline(browsing: Browsing, web: Web) -> list[str]:
    """Refuse every request that leaves the app, and return the list of those tried."""
    elsewhere: list[str] = []

    async def only_the_app(route: Any) -> None:
        url = route.request.url
        if url.startswith((web.url + "/", "data:", "blob:")):
            await route.continue_()
        else:
            elsewhere.append(url)
            await route.abort()

    await browsing.context.route("**/*", only_the_app)
    return elsewhere


async def test_swagger_ui_renders_offline_without_console_errors(
    web: Web, browsing: Browsing
) -> None:
    elsewhere = await _offline(browsing, web)
    page = browsing.page
    response = await page.goto(f"{web.url}/docs")
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self' 'sha256-" in csp
    assert "http" not in csp and "unsafe-eval" not in csp

    # Every operation of the schema is listed, grouped by tag.
    await until(page, "document.querySelectorAll('.opblock').length >= 10")
    paths = await page.locator(".opblock-summary-path").all_text_contents()
    assert "/api/tracks" in [p.replace("\u200b", "") for p in paths]
    # Opening one shows its parameters, with the documented paging bounds.
    await page.locator("#operations-tracks-list_tracks_api_tracks_get button").first.click()
    await until(page, "document.body.innerText.includes('maximum: 1000000')")
    await page.screenshot(path=screenshot_path("docs-swagger-ui"), full_page=False)

    assert elsewhere == []
    assert browsing.problems.errors == []


async def test_redoc_renders_offline_without_console_errors(web: Web, browsing: Browsing) -> None:
    elsewhere = await _offline(browsing, web)
    page = browsing.page
    response = await page.goto(f"{web.url}/redoc")
    assert response is not None and response.status == 200
    assert "default-src 'none'" in response.headers["content-security-policy"]

    await until(page, "document.querySelectorAll('[data-section-id]').length >= 10")
    await until(page, "document.body.innerText.includes('/api/tracks')")
    await page.screenshot(path=screenshot_path("docs-redoc"), full_page=False)

    assert elsewhere == []
    # ReDoc's bundle hard-codes one remote image (the "API docs by Redocly" logo, which it
    # hides when it fails to load); the page's CSP blocks it, as it should, and Chromium
    # reports that. It is the only error allowed, and it is matched exactly.
    blocked_logo = re.compile(r"^Loading the image 'https://cdn\.redoc\.ly/[^']+' violates")
    assert [e for e in browsing.problems.errors if not blocked_logo.match(e)] == []
    browsing.problems.errors.clear()  # the fixture's own CSP check has seen it here


async def test_docs_assets_are_served_by_the_app(web: Web) -> None:
    for asset, kind in (
        ("swagger-ui-bundle.js", "javascript"),
        ("swagger-ui.css", "text/css"),
        ("redoc.standalone.js", "javascript"),
    ):
        response = await web.http.get(f"/docs-assets/{asset}")
        assert response.status_code == 200, asset
        assert kind in response.headers["content-type"], (asset, response.headers)
