"""PNG previews of covers: always square, any document size or unit, text drawn."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from domain.covers import BACKDROP, PNG_SIZE, CoverRenderError, cover_seed, render_png
from engines.cover_art import render_cover_svg
from engines.svg_frame import square_svg
from engines.svg_sanitize import sanitize_svg

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).resolve().parents[1] / "engines" / "svg_corpus"
BENIGN = sorted((CORPUS / "benign").glob("*.svg"))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


@pytest.mark.parametrize("svg", [p.read_text() for p in BENIGN], ids=[p.name for p in BENIGN])
async def test_every_benign_cover_renders_square(svg: str) -> None:
    png = await render_png(sanitize_svg(svg), dark=False)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.size == (PNG_SIZE, PNG_SIZE)


async def test_a_tall_cover_is_centred_on_the_backdrop() -> None:
    tall = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 400">'
        '<rect width="200" height="400" fill="#ff0000"/></svg>'
    )
    for dark in (True, False):
        image = Image.open(io.BytesIO(await render_png(tall, dark=dark))).convert("RGB")
        assert image.getpixel((5, PNG_SIZE // 2)) == _rgb(BACKDROP[dark])
        assert image.getpixel((PNG_SIZE // 2, PNG_SIZE // 2)) == (255, 0, 0)


def test_square_derives_a_view_box_from_absolute_units() -> None:
    out = square_svg(
        '<svg xmlns="http://www.w3.org/2000/svg" width="1in" height="2in"><g/></svg>', PNG_SIZE
    )
    assert out.startswith(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PNG_SIZE}" height="{PNG_SIZE}" '
        'preserveAspectRatio="xMidYMid meet" viewBox="0 0 96 192">'
    )
    assert out.endswith("<g/></svg>")


async def test_the_title_is_drawn() -> None:
    # Same art, different title: only text can make the pixels differ.
    a = await render_png(render_cover_svg("x", 1, 1, title="Alpha"))
    b = await render_png(render_cover_svg("x", 1, 1, title="Omega"))
    assert a != b


async def test_an_undrawable_svg_is_a_render_error() -> None:
    with pytest.raises(CoverRenderError):
        await render_png("not an SVG document")


def test_cover_seed_prefers_the_style_seed_only_when_on() -> None:
    assert cover_seed(5, 99, style_seed_enabled=True) == 99
    assert cover_seed(5, 99, style_seed_enabled=False) == 5
    assert cover_seed(5, None, style_seed_enabled=True) == 5
