"""Cover art: deterministic, varied per visual_version, well-formed and safe with hostile text."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from engines.cover_art import MAX_TITLE_CHARS, cover_title, palette_for, render_cover_svg

pytestmark = pytest.mark.unit

SVG = "{http://www.w3.org/2000/svg}"
PROMPT = "Warm ambient pad"
HOSTILE = "</text><script>alert(1)</script>&\"'"


def _motif(svg: str) -> str:
    """The main shape layer, serialized, so shape differences can be compared directly."""
    root = ET.fromstring(svg)
    groups = [g for g in root.iter(f"{SVG}g") if g.get("id", "").endswith("-motif")]
    assert len(groups) == 1
    return ET.tostring(groups[0], encoding="unicode")


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_same_inputs_give_byte_identical_svg() -> None:
    assert render_cover_svg(PROMPT, 7, 1) == render_cover_svg(PROMPT, 7, 1)
    assert palette_for(PROMPT, 7, 1) == palette_for(PROMPT, 7, 1)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
def test_new_visual_version_changes_palette_and_shapes(version: int) -> None:
    assert palette_for(PROMPT, 7, version) != palette_for(PROMPT, 7, version + 1)
    assert _motif(render_cover_svg(PROMPT, 7, version)) != _motif(
        render_cover_svg(PROMPT, 7, version + 1)
    )


def test_prompt_and_seed_also_change_the_art() -> None:
    base = render_cover_svg(PROMPT, 7, 1)
    assert _motif(render_cover_svg(PROMPT, 8, 1)) != _motif(base)
    assert _motif(render_cover_svg("Cold techno", 7, 1)) != _motif(base)


def test_palette_is_five_hex_colours() -> None:
    colours = palette_for(PROMPT, 7, 1)
    assert len(colours) == 5
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colours)


def test_output_is_self_contained_svg_with_viewbox() -> None:
    svg = render_cover_svg(PROMPT, 7, 1, size=512)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    assert root.get("viewBox") == "0 0 512 512"
    # Nothing fetched: the only URL is the namespace; every url() points inside the file.
    assert re.findall(r"https?://[^\"']+", svg) == ["http://www.w3.org/2000/svg"]
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", svg))
    assert not any(el.tag.endswith(("script", "image", "foreignObject")) for el in root.iter())
    assert PROMPT in _texts(svg)


def test_hostile_prompt_is_only_ever_text() -> None:
    svg = render_cover_svg(HOSTILE, 1, 1)
    root = ET.fromstring(svg)
    assert not any(el.tag.endswith("script") for el in root.iter())
    assert "<script" not in svg
    assert HOSTILE in _texts(svg)
    # The same escaping applies to an explicit title.
    assert HOSTILE in _texts(render_cover_svg(PROMPT, 1, 1, title=HOSTILE))


def test_control_characters_cannot_break_the_xml() -> None:
    svg = render_cover_svg("a\x00b\x1bc\ufffe\ud800d\n\te", 1, 1)
    assert "abcd e" in _texts(svg)


def test_long_prompt_is_truncated_and_small() -> None:
    prompt = ("dreamy lofi piano with vinyl crackle & rain <3 " * 12)[:500]
    svg = render_cover_svg(prompt, 123, 9)
    assert len(svg.encode("utf-8")) < 50_000
    title = cover_title(prompt)
    assert len(title) <= MAX_TITLE_CHARS
    assert title.endswith("\u2026")
    assert title in _texts(svg)


def test_explicit_title_wins_and_blank_prompt_has_fallback() -> None:
    assert "My Track" in _texts(render_cover_svg(PROMPT, 1, 1, title="  My   Track "))
    assert cover_title("   \n ") == "Untitled"


def test_rejects_non_positive_size() -> None:
    with pytest.raises(ValueError):
        render_cover_svg(PROMPT, 1, 1, size=0)
