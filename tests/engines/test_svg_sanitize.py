"""User SVG validation: a corpus of attacks must be refused, real covers must round-trip."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from engines import svg_sanitize
from engines.cover_art import render_cover_svg
from engines.svg_sanitize import (
    MAX_DEPTH,
    MAX_EXPANDED_REFERENCES,
    SvgRejected,
    SvgTooComplex,
    SvgTooLarge,
    sanitize_svg,
)

pytestmark = pytest.mark.unit

CORPUS = Path(__file__).parent / "svg_corpus"
HOSTILE = sorted((CORPUS / "hostile").glob("*.svg"))
BENIGN = sorted((CORPUS / "benign").glob("*.svg"))
SVG = "{http://www.w3.org/2000/svg}"
MINIMAL = '<svg xmlns="http://www.w3.org/2000/svg"/>'

# Why each hostile file must be refused. Pinning the reason stops a file from "passing" for
# an accidental one (a typo making it malformed, say) while the real attack goes untested.
EXPECTED_REASON = {
    "a_ping_tracking.svg": "attribute 'ping'",
    "animate_href_javascript.svg": "may not animate 'href'",
    "audio.svg": "<audio> elements",
    "billion_laughs.svg": "DOCTYPE",
    "css_expression.svg": "expression(",
    "css_image_set.svg": "image-set(",
    "css_import_escaped.svg": "@import",
    "css_import_style_element.svg": "@import",
    "css_url_comment_split.svg": "url()",
    "css_url_escaped.svg": "url()",
    "style_holding_elements.svg": "may contain only CSS text",
    "css_url_hidden_by_fake_comment.svg": "url()",
    "css_url_style_attr.svg": "url()",
    "deep_nesting.svg": "nested",
    "doctype_internal_subset.svg": "DOCTYPE",
    "embed.svg": "<embed> elements",
    "external_dtd.svg": "DOCTYPE",
    "foreign_object_html.svg": "<foreignObject> elements",
    "handler_element.svg": "<handler> elements",
    "href_data_png.svg": "links to 'data:image/png",
    "href_data_svg.svg": "links to 'data:image/svg+xml",
    "href_file.svg": "links to 'file:",
    "href_https_link.svg": "links to 'https:",
    "href_javascript.svg": "links to 'javascript:",
    "href_javascript_entity_encoded.svg": "links to 'javascript:",
    "href_protocol_relative.svg": "links to '//evil",
    "href_relative_path.svg": "links to '../",
    "href_whitespace_javascript.svg": "script:alert",
    "html_root.svg": "root element must be <svg>",
    "iframe.svg": "<iframe> elements",
    "listener_element.svg": "<listener> elements",
    "malformed.svg": "not well-formed",
    "object.svg": "<object> elements",
    "onbegin_animate.svg": "event handler attribute 'onbegin'",
    "onclick_child.svg": "event handler attribute 'onclick'",
    "onevent_namespaced.svg": "event handler attribute 'onfocus'",
    "onload_root.svg": "event handler attribute 'onload'",
    "onmouseover_mixed_case.svg": "event handler attribute 'OnMouseOver'",
    "pi_inside_root.svg": "processing instruction <?php",
    "plain_text.svg": "not well-formed",
    "presentation_attr_url.svg": "url() in attribute 'filter'",
    "script_cdata.svg": "<script> elements",
    "script_tag.svg": "<script> elements",
    "script_uppercase.svg": "<SCRIPT> elements",
    "script_xhtml_namespace.svg": "<script> elements",
    "set_onclick.svg": "may not animate 'onclick'",
    "set_xlink_href.svg": "may not animate ' XLINK:HREF '",
    "svg_root_wrong_namespace.svg": "SVG namespace",
    "unclosed_attribute_confusion.svg": "not well-formed",
    "use_data_url.svg": '<use> links to "data:',
    "use_external.svg": "<use> links to 'http:",
    "video.svg": "<Video> elements",
    "xhtml_element_no_handler.svg": "namespace http://www.w3.org/1999/xhtml",
    "xml_base.svg": "'xml:base'",
    "xlink_href_http.svg": "<image> links to 'http:",
    "xml_stylesheet_pi.svg": "processing instruction <?xml-stylesheet",
    "xxe_external_entity.svg": "DOCTYPE",
}


def _svg(body: str, *, attrs: str = "") -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"{attrs}>{body}</svg>'


def _cover() -> str:
    return render_cover_svg("Warm ambient pad", 7, 1)


# --------------------------------------------------------------------------- corpus


def test_corpus_is_big_enough_and_every_attack_has_an_expected_reason() -> None:
    assert len(HOSTILE) >= 25
    assert len(BENIGN) >= 5
    assert {p.name for p in HOSTILE} == set(EXPECTED_REASON)


@pytest.mark.parametrize("path", HOSTILE, ids=[p.name for p in HOSTILE])
def test_hostile_svg_is_rejected_with_a_reason(path: Path) -> None:
    with pytest.raises(SvgRejected) as info:
        sanitize_svg(path.read_bytes())
    assert info.value.reason.strip()
    assert str(info.value) == info.value.reason
    assert EXPECTED_REASON[path.name] in info.value.reason
    assert not isinstance(info.value, SvgTooLarge)


@pytest.mark.parametrize("path", HOSTILE, ids=[p.name for p in HOSTILE])
def test_hostile_svg_is_rejected_as_str_too(path: Path) -> None:
    with pytest.raises(SvgRejected):
        sanitize_svg(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", BENIGN, ids=[p.name for p in BENIGN])
def test_benign_svg_passes_and_reparses(path: Path) -> None:
    out = sanitize_svg(path.read_bytes())
    assert out.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    root = ET.fromstring(out)
    assert root.tag == f"{SVG}svg"
    assert sanitize_svg(out) == out
    assert sanitize_svg(path.read_text(encoding="utf-8")) == out


def test_generated_cover_passes_unchanged() -> None:
    cover = _cover()
    out = sanitize_svg(cover)
    assert ET.canonicalize(out) == ET.canonicalize(cover)
    assert sanitize_svg(out) == out


# --------------------------------------------------------------------------- size


def test_exactly_max_bytes_is_not_too_large() -> None:
    padded = MINIMAL.replace("/>", " " * (1_000_000 - len(MINIMAL)) + "/>")
    assert len(padded.encode()) == 1_000_000
    assert sanitize_svg(padded) == MINIMAL


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_one_byte_over_is_too_large(as_bytes: bool) -> None:
    data = MINIMAL.replace("/>", " " * (1_000_001 - len(MINIMAL)) + "/>")
    with pytest.raises(SvgTooLarge) as info:
        sanitize_svg(data.encode() if as_bytes else data)
    assert isinstance(info.value, SvgRejected)
    assert "1000000 bytes" in info.value.reason


def test_size_counts_utf8_bytes_not_characters() -> None:
    text = _svg(f"<text>{'é' * 600_000}</text>")  # ~600k characters, ~1.2 MB of UTF-8
    with pytest.raises(SvgTooLarge):
        sanitize_svg(text)
    assert sanitize_svg(text, max_bytes=2_000_000)


def test_custom_limit() -> None:
    with pytest.raises(SvgTooLarge):
        sanitize_svg(MINIMAL, max_bytes=10)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_huge_input_is_refused_fast_without_parsing(
    as_bytes: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parser must not run for oversize input")

    monkeypatch.setattr(svg_sanitize, "DefusedXMLParser", no_parsing)
    huge = "<svg>" + "a" * 50_000_000 + "</svg>"
    data: str | bytes = huge.encode() if as_bytes else huge
    start = time.perf_counter()
    with pytest.raises(SvgTooLarge):
        sanitize_svg(data)
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------- text and output


def test_escaped_markup_in_text_stays_text() -> None:
    out = sanitize_svg(_svg("<text>&lt;script&gt;alert(1)&lt;/script&gt;</text>"))
    assert "<script" not in out
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    root = ET.fromstring(out)
    assert [el.tag for el in root.iter()] == [f"{SVG}svg", f"{SVG}text"]
    assert root[0].text == "<script>alert(1)</script>"


def test_cdata_markup_is_escaped_on_output() -> None:
    out = sanitize_svg(_svg("<text><![CDATA[</text><script>x</script>]]></text>"))
    assert "<script" not in out
    assert ET.fromstring(out)[0].text == "</text><script>x</script>"


def test_attribute_quotes_and_whitespace_survive_round_trip() -> None:
    out = sanitize_svg(_svg('<text id="a" font-family=\'"Inter", sans\'>x</text>'))
    assert ET.fromstring(out)[0].get("font-family") == '"Inter", sans'
    tricky = ET.fromstring(sanitize_svg(_svg('<g class="a&#10;b&#9;c&#13;d"/>')))[0]
    assert tricky.get("class") == "a\nb\tc\rd"


def test_comments_and_xml_declaration_are_dropped() -> None:
    out = sanitize_svg('<?xml version="1.0" encoding="UTF-8"?>' + _svg("<!-- hi --><g/>"))
    assert out == _svg("<g/>")


def test_idempotent_on_everything_accepted() -> None:
    for text in [_cover(), *(p.read_text(encoding="utf-8") for p in BENIGN)]:
        once = sanitize_svg(text)
        assert sanitize_svg(once) == once


def test_non_ascii_declared_encoding_is_decoded() -> None:
    doc = '<?xml version="1.0" encoding="ISO-8859-1"?>' + _svg("<title>Caf\xe9</title>")
    out = sanitize_svg(doc.encode("latin-1"))
    assert ET.fromstring(out)[0].text == "Caf\u00e9"


# --------------------------------------------------------------------------- policy decisions


def test_namespaceless_root_is_adopted_into_svg_namespace() -> None:
    out = sanitize_svg('<svg viewBox="0 0 1 1"><g><rect width="1" height="1"/></g></svg>')
    root = ET.fromstring(out)
    assert [el.tag for el in root.iter()] == [f"{SVG}svg", f"{SVG}g", f"{SVG}rect"]


def test_namespaceless_root_still_gets_every_check() -> None:
    with pytest.raises(SvgRejected, match="script"):
        sanitize_svg("<svg><script>alert(1)</script></svg>")
    with pytest.raises(SvgRejected, match="event handler"):
        sanitize_svg('<svg onload="alert(1)"/>')


def test_namespaceless_child_in_svg_document_is_rejected() -> None:
    with pytest.raises(SvgRejected, match="no namespace"):
        sanitize_svg(_svg('<g xmlns=""><rect/></g>'))


def test_standard_svg11_doctype_is_rejected_too() -> None:
    doc = (
        '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        '"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">' + MINIMAL
    )
    with pytest.raises(SvgRejected, match="DOCTYPE"):
        sanitize_svg(doc)


def test_undefined_entity_is_rejected() -> None:
    with pytest.raises(SvgRejected, match="well-formed"):
        sanitize_svg(_svg("<text>&nbsp;</text>"))


@pytest.mark.parametrize(
    "href",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "DATA:image/png;base64,iVBORw0KGgo=",
        "JaVaScRiPt:alert(1)",
        "&#x1;javascript:alert(1)",  # not even a legal XML 1.0 character
        "&#x20;&#x0A;javascript:alert(1)",
        "https://example.com/#x",
        "#x y",
        "#",
        "",
        "x.svg#x",
        "\\\\evil.example\\share",
    ],
)
def test_only_same_document_fragments_are_allowed_in_href(href: str) -> None:
    with pytest.raises(SvgRejected):
        sanitize_svg(_svg(f'<use href="{href}"/>'))


@pytest.mark.parametrize("href", ["#a", " #a ", "#a-b_c.d:e", "#\u00e9t\u00e9"])
def test_fragment_hrefs_are_allowed(href: str) -> None:
    out = sanitize_svg(_svg(f'<g id="a"/><use href="{href}"/>'))
    assert ET.fromstring(out)[1].get("href") == href


@pytest.mark.parametrize(
    "css",
    [
        "fill:url(http://x/)",
        "fill:URL( 'http://x/' )",
        "fill:url(#a) url(//x/)",
        "fill:url(#a http://x/)",
        "fill:url(\n http://x/ \n)",
        "fill:u\\rl(http://x/)",
        "fill:\\75 \\72 \\6C (http://x/)",
        "fill:\\000075rl(http://x/)",
        "fill:u/**/rl(http://x/)",
        "fill:url\\28 http://x/)",
        "x:expression(alert(1))",
        "x:exp/**/ression(alert(1))",
        "x:EXPRESSION(alert(1))",
        "@import 'x.css'",
        "@IMPORT url(x.css)",
        "x:src('http://x/')",
        "x:image('http://x/')",
        "x:cross-fade(url(#a), 'http://x/')",
    ],
)
def test_css_that_fetches_or_runs_is_rejected(css: str) -> None:
    escaped = css.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")
    with pytest.raises(SvgRejected, match="CSS"):
        sanitize_svg(_svg(f"<rect style='{escaped}'/>"))
    with pytest.raises(SvgRejected, match="CSS"):
        sanitize_svg(_svg(f"<style>{escaped}</style>"))


@pytest.mark.parametrize(
    "css",
    [
        "fill:url(#a)",
        "fill:url( \"#a\" ); stroke:url('#b')",
        "fill:url(\n#a\t)",
        "font-family:'Some Image (Bold)', src (x)",
        "fill:#fff; font-family:'Inter', sans-serif",
        "@media (min-width: 10px) { .a { fill: red } }",
        "/* (comment) */ .a\\:b { fill: rgb(1, 2, 3) }",
    ],
)
def test_safe_css_passes(css: str) -> None:
    escaped = css.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    sanitize_svg(_svg(f'<rect style="{escaped}"/>'))
    sanitize_svg(_svg(f"<style>{escaped}</style>"))


@pytest.mark.parametrize(
    "attribute_name", ["href", "xlink:href", " HREF", "onclick", "ONLOAD", "xlink:onfoo", "ping"]
)
@pytest.mark.parametrize("element", ["set", "animate", "animateTransform", "animateMotion"])
def test_animation_may_not_target_links_or_handlers(element: str, attribute_name: str) -> None:
    with pytest.raises(SvgRejected, match="may not animate"):
        sanitize_svg(_svg(f'<a><{element} attributeName="{attribute_name}" to="#a"/></a>'))


def test_animation_values_are_checked_as_css() -> None:
    with pytest.raises(SvgRejected, match="url"):
        sanitize_svg(_svg('<rect><set attributeName="fill" to="url(http://x/#p)"/></rect>'))


@pytest.mark.parametrize(
    "name", ["script", "Script", "foreignObject", "FOREIGNOBJECT", "iframe", "handler"]
)
def test_forbidden_elements_in_any_namespace(name: str) -> None:
    for xmlns in ("", ' xmlns="http://www.w3.org/1999/xhtml"', ' xmlns="urn:x"'):
        with pytest.raises(SvgRejected, match="elements are not allowed"):
            sanitize_svg(_svg(f"<g><{name}{xmlns}/></g>"))


def test_unknown_namespace_elements_are_rejected() -> None:
    with pytest.raises(SvgRejected, match="namespace urn:x"):
        sanitize_svg(_svg('<thing xmlns="urn:x"/>'))
    with pytest.raises(SvgRejected, match="namespace"):
        sanitize_svg(_svg('<rect xmlns:x="urn:x" x:fill="red"/>'))


def test_nesting_limit() -> None:
    ok = _svg("<g>" * (MAX_DEPTH - 1) + "</g>" * (MAX_DEPTH - 1))
    assert sanitize_svg(ok)
    with pytest.raises(SvgRejected, match="nested"):
        sanitize_svg(_svg("<g>" * MAX_DEPTH + "</g>" * MAX_DEPTH))


def test_very_deep_nesting_within_size_limit_is_rejected_not_crashed() -> None:
    depth = 120_000  # ~840 kB of "<g>...</g>", under the size limit
    with pytest.raises(SvgRejected, match="nested"):
        sanitize_svg(_svg("<g>" * depth + "</g>" * depth))


@pytest.mark.parametrize("data", ["", "   ", b"", b"\xff\xfe\x00", "<svg", "\ud800<svg/>"])
def test_garbage_is_rejected_not_crashed(data: str | bytes) -> None:
    with pytest.raises(SvgRejected):
        sanitize_svg(data)


def test_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        sanitize_svg(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reference fan-out


def _nested_uses(levels: int, fan: int = 10, leaf: str = '<rect id="l0" width="10"/>') -> str:
    groups = "".join(
        f'<g id="l{level}">' + f'<use href="#l{level - 1}"/>' * fan + "</g>"
        for level in range(1, levels + 1)
    )
    return _svg(f'<defs>{leaf}{groups}</defs><use href="#l{levels}"/>')


def _expanded(svg: str) -> int:
    return svg_sanitize.expanded_reference_count(ET.fromstring(svg))


def test_a_kilobyte_use_bomb_is_too_complex() -> None:
    bomb = _nested_uses(5)
    assert len(bomb) < 1100
    with pytest.raises(SvgTooComplex) as info:
        sanitize_svg(bomb)
    assert f"more than {MAX_EXPANDED_REFERENCES}" in info.value.reason
    assert isinstance(info.value, SvgRejected) and not isinstance(info.value, SvgTooLarge)


def test_fan_out_multiplies_through_nesting() -> None:
    # Each level's group draws itself and ten <use> of the level below, each in full.
    one, two = _expanded(_nested_uses(1)), _expanded(_nested_uses(2))
    # The ten inner uses draw a rect each; the outer use draws the group, its ten uses and
    # their ten rects again.
    assert one == 10 * 1 + (1 + 10 * 2)
    assert two > 10 * one
    assert _expanded(_nested_uses(3)) > 10 * two


def test_budget_is_a_boundary_and_configurable() -> None:
    svg = _nested_uses(2)
    count = _expanded(svg)
    assert sanitize_svg(svg, max_expanded_references=count)
    with pytest.raises(SvgTooComplex):
        sanitize_svg(svg, max_expanded_references=count - 1)


def test_patterns_masks_and_markers_count_as_references() -> None:
    leaf = '<pattern id="l0"><circle r="1"/><circle r="2"/></pattern>'
    fills = "".join('<rect width="1" height="1" fill="url(#l0)"/>' for _ in range(50))
    assert _expanded(_svg(f"<defs>{leaf}</defs>{fills}")) == 50 * 3
    masked = _svg('<mask id="m"><rect/><rect/></mask>' + '<path mask="url(#m)"/>' * 4)
    assert _expanded(masked) == 4 * 3
    # Escaped and commented url() in a style attribute still count.
    styled = _svg('<g id="g"><rect/></g><rect style="fill: u\\72l(#g)"/>')
    assert _expanded(styled) == 2


def test_stylesheet_references_count_once_per_element() -> None:
    doc = _svg(
        "<style>rect { fill: url(#p) }</style>"
        '<pattern id="p"><circle r="1"/></pattern>' + "<rect/>" * 10
    )
    elements = len(list(ET.fromstring(doc).iter()))
    assert _expanded(doc) == 2 * elements


def test_gradients_cost_nothing_to_reference() -> None:
    gradient = '<linearGradient id="g"><stop offset="0"/><stop offset="1"/></linearGradient>'
    many = '<rect fill="url(#g)"/>' * 5000
    doc = _svg(f"<defs>{gradient}</defs><style>.a {{ fill: url(#g) }}</style>{many}")
    assert _expanded(doc) == 0
    assert sanitize_svg(doc)


def test_a_long_chain_of_uses_is_refused_without_recursion_errors() -> None:
    chain = '<rect id="c0"/>' + "".join(
        f'<use id="c{i}" href="#c{i - 1}"/>' for i in range(1, 5000)
    )
    with pytest.raises(SvgTooComplex):
        sanitize_svg(_svg(chain))  # quadratic: the last use draws the 4999 before it


@pytest.mark.parametrize(
    "body",
    [
        '<g id="a"><use href="#a"/></g>',
        '<use id="a" href="#a"/>',
        '<pattern id="p"><rect fill="url(#q)"/></pattern><pattern id="q"><rect fill="url(#p)"/>'
        "</pattern>",
    ],
)
def test_reference_loops_are_refused(body: str) -> None:
    with pytest.raises(SvgTooComplex, match="loop back"):
        sanitize_svg(_svg(body))


def test_links_and_animation_targets_are_not_drawing_references() -> None:
    doc = _svg(
        '<a href="#top"><text>back to top</text></a><rect id="r"/>'
        '<animate href="#r" attributeName="x" to="5"/>',
        attrs=' id="top"',
    )
    assert _expanded(doc) == 0
    assert sanitize_svg(doc)


def test_benign_corpus_and_generated_covers_stay_well_inside_the_budget() -> None:
    for path in BENIGN:
        assert _expanded(path.read_text(encoding="utf-8")) < MAX_EXPANDED_REFERENCES // 100
    assert _expanded(_cover()) < 10
