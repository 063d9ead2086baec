"""Strict validation of user-supplied SVG cover art.

`sanitize_svg` either raises `SvgRejected` (with a short reason fit for a 400 response) or
returns the document re-serialized from the parsed tree, so what gets stored is exactly what
was checked: no comments, no XML declaration, no byte-level tricks that a browser might parse
differently from us. The policy is a rejection policy, never a silent clean-up: a user whose
file contained a script should hear about it, not get a quietly different picture.

Policy, in the order it is applied:

* Size: more than `max_bytes` (UTF-8) raises `SvgTooLarge` before any parsing.
* Parsing: defusedxml with DTDs, entity declarations and external references forbidden (no
  XXE, no billion laughs). This rejects every DOCTYPE, even the harmless SVG 1.1 one.
  Processing instructions (e.g. xml-stylesheet) are rejected; the XML declaration is not a
  PI and is accepted (and dropped from the output). Comments are dropped.
* Root: must be `<svg>` in the SVG namespace. A root `<svg>` with no namespace at all (a
  common hand-written mistake that browsers render inline but not as a file) is accepted
  and every namespace-less element is moved into the SVG namespace before checking, so the
  stored file renders standalone.
* Elements: only the SVG namespace plus a few inert editor/metadata namespaces (Inkscape,
  Sodipodi, RDF, Creative Commons, Dublin Core). XHTML, MathML and unknown namespaces are
  rejected. Script-capable or embedding elements (script, foreignObject, iframe, ...) are
  rejected by case-insensitive local name in any namespace.
* Attributes: no event handlers (local name starting with "on", any case, any namespace);
  no `xml:base`; `href` in any namespace must be a same-document fragment `#id` once
  surrounding whitespace/control characters are trimmed. That rejects http(s):, file:,
  javascript:, protocol-relative and relative URLs, and also all `data:` URLs, including
  embedded rasters: a data: image is an opaque blob we cannot inspect (and data:image/svg+xml is a
  whole second document), so covers have to be pure vector.
* CSS: every attribute value (presentation attributes such as fill, filter, mask or cursor
  take url() too) and every `<style>` element is checked after decoding CSS escapes, both
  with and without comments: `url()` may only point at `#id`; `@import`, `expression()` and
  the other URL-taking functions (src, image, image-set, cross-fade) are rejected. A
  `<style>` may hold only text: an element inside one is rejected (no stylesheet needs
  one, and each nested `<style>` would be a stylesheet of its own to check, re-reading
  the text below it: work growing with depth times size).
* Animation: `attributeName` may not target `href` or an event handler.
* Nesting deeper than `MAX_DEPTH` is rejected (keeps the serializer's recursion bounded).
* Reference fan-out: every `#id` reference (`<use>` and any other href, `url(#id)` in an
  attribute or a `<style>`) draws its target again, and references inside the target
  multiply: ten `<use>` of a group of ten `<use>` of a shape draw a hundred shapes. The
  elements drawn through references, counted after expanding the whole reference graph,
  may not exceed `MAX_EXPANDED_REFERENCES`, and references may not loop; otherwise
  `SvgTooComplex`. Gradients and their stops count zero (a fill, not extra drawing). A
  reference from a `<style>` is counted once per element of the document, since a selector
  may match any of them. The budget refuses render bombs cheaply; the renderer's CPU and
  memory limits (engines/render_sandbox.py) bound whatever stays expensive below it.

Cost: every step reads each character of the document a bounded number of times (each
value is decoded once, for both the checks and the references; the reference graph is
walked once), so the work grows linearly with the size, whatever the document's shape
(tests/engines/test_svg_sanitize.py measures the worst shapes at the size limit). User
documents are sanitized in the render sandbox's child process all the same, under its
CPU, memory and time limits.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_DEPTH",
    "MAX_EXPANDED_REFERENCES",
    "SvgRejected",
    "SvgTooComplex",
    "SvgTooLarge",
    "check_size",
    "expanded_reference_count",
    "sanitize_svg",
]

DEFAULT_MAX_BYTES = 1_000_000
MAX_DEPTH = 200
# Elements a document may draw through #id references once they are all expanded. Real
# art with clones and patterns stays in the hundreds; a ~1 KB file of five nested levels
# of ten <use> each expands past 100 000.
MAX_EXPANDED_REFERENCES = 20_000

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# Editor bookkeeping namespaces. Browsers treat their elements as inert unknown XML, and
# rejecting them would refuse most files saved by Inkscape.
_EDITOR_NAMESPACES = {
    "http://www.inkscape.org/namespaces/inkscape": "inkscape",
    "http://sodipodi.sourceforge.net/DTD/sodipodi-0.dtd": "sodipodi",
    "http://www.w3.org/1999/02/22-rdf-syntax-ns#": "rdf",
    "http://creativecommons.org/ns#": "cc",
    "http://purl.org/dc/elements/1.1/": "dc",
}
# Output prefix for every namespace that can survive the checks ("" = default namespace).
_PREFIXES = {SVG_NS: "", XLINK_NS: "xlink", XML_NS: "xml", **_EDITOR_NAMESPACES}
_ELEMENT_NAMESPACES = frozenset({SVG_NS, *_EDITOR_NAMESPACES})
_ATTRIBUTE_NAMESPACES = frozenset({"", XLINK_NS, XML_NS, *_EDITOR_NAMESPACES})
_XML_ATTRIBUTES = frozenset({"space", "lang", "id"})  # i.e. not xml:base, which moves "#id"

# Elements that run script, embed other documents or media, or attach event listeners.
_FORBIDDEN_ELEMENTS = frozenset(
    {
        "script",
        "foreignobject",
        "iframe",
        "frame",
        "frameset",
        "embed",
        "object",
        "applet",
        "audio",
        "video",
        "handler",
        "listener",
        "base",
        "link",
        "meta",
    }
)

# URL-bearing attributes with no use in a cover (HTML ones in case a browser honours them;
# `ping` is SVG 2's click-tracking list on <a>). href is the only link attribute allowed.
_URL_ATTRIBUTES = frozenset({"ping", "src", "srcset", "action", "formaction", "background"})

# A same-document reference: "#" and an id, nothing that could be a scheme, path or host.
_FRAGMENT = re.compile(r"#[\w.\-:]+")
_URL_TRIM = "".join(map(chr, range(0x21))) + "\x7f"  # C0 controls, space and DEL
_CSS_URL_ARGUMENT = re.compile(r"""\s*(['"]?)#[\w.\-:]+\1\s*\)""")
# CSS functions and at-rules other than url() that fetch or run something.
_CSS_FORBIDDEN = ("@import", "expression(", "src(", "image(", "image-set(", "cross-fade(")
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\n\r\f]?|(\r\n|[\n\r\f])|(.))", re.DOTALL)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.DOTALL)


class SvgRejected(ValueError):
    """The SVG failed validation; `reason` is short and safe to show to the uploader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SvgTooLarge(SvgRejected):
    """The SVG is over the size limit (the API answers 413 rather than 400)."""


class SvgTooComplex(SvgRejected):
    """Its references expand past the budget or loop (the API answers 422)."""


def sanitize_svg(
    data: str | bytes,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_expanded_references: int = MAX_EXPANDED_REFERENCES,
) -> str:
    """Validate user SVG and return it re-serialized from the checked tree, or raise.

    Raises SvgTooLarge if the input is over `max_bytes`, SvgTooComplex if its references
    expand past `max_expanded_references` (or loop), SvgRejected for anything else.
    The result is idempotent: sanitizing it again returns the same string.
    """
    check_size(data, max_bytes)
    root = _parse(data)
    _adopt_namespaceless_svg(root)
    _check_root(root)
    _check_depth(root)
    # The checks decode each value once and note the ids it references on the way.
    references = {id(elem): _check_element(elem) for elem in root.iter()}
    expanded = expanded_reference_count(
        root, stop_above=max_expanded_references, references=references
    )
    if expanded > max_expanded_references:
        raise SvgTooComplex(
            f"its #id references (<use>, patterns, masks, url(#...)) expand to more than "
            f"{max_expanded_references} drawn elements; flatten or simplify it"
        )
    return _serialize(root)


# --------------------------------------------------------------------------- input


def check_size(data: str | bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Raise SvgTooLarge when `data` is over `max_bytes` in UTF-8 (before any parsing)."""
    if isinstance(data, str):
        # Each code point is at least one UTF-8 byte, so a huge string is refused without
        # encoding it; only strings that might fit pay for the exact count.
        size = len(data)
        if size <= max_bytes:
            size = len(data.encode("utf-8", "surrogatepass"))
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise TypeError(f"SVG must be str or bytes, not {type(data).__name__}")
    if size > max_bytes:
        raise SvgTooLarge(f"SVG is larger than {max_bytes} bytes")


class _Builder(ET.TreeBuilder):
    """A TreeBuilder that remembers processing instructions, which ElementTree drops."""

    def __init__(self) -> None:
        super().__init__()
        self.pi_targets: list[str] = []

    def pi(self, target: str, text: str | None = None) -> ET.Element:
        self.pi_targets.append(target)
        return super().pi(target, text)


def _parse(data: str | bytes) -> ET.Element:
    builder = _Builder()
    parser = DefusedXMLParser(
        target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(data)
        root = parser.close()
    except DTDForbidden:
        raise SvgRejected("DOCTYPE declarations are not allowed; remove the <!DOCTYPE>") from None
    except (EntitiesForbidden, ExternalReferenceForbidden):
        raise SvgRejected("entity declarations and external references are not allowed") from None
    except ET.ParseError as exc:
        raise SvgRejected(f"not well-formed XML: {exc}") from None
    except (ValueError, LookupError):  # includes UnicodeError: undecodable input
        raise SvgRejected("not well-formed XML: could not decode the document") from None
    if builder.pi_targets:
        # xml-stylesheet and friends can pull in XSLT or CSS from elsewhere.
        raise SvgRejected(f"processing instruction <?{builder.pi_targets[0][:40]}?> is not allowed")
    if not isinstance(root, ET.Element):
        raise SvgRejected("not well-formed XML: no root element")
    return root


# --------------------------------------------------------------------------- document checks


def _split(name: str) -> tuple[str, str]:
    """'{ns}local' -> ('ns', 'local'); 'local' -> ('', 'local')."""
    if name.startswith("{"):
        ns, _, local = name[1:].partition("}")
        return ns, local
    return "", name


def _adopt_namespaceless_svg(root: ET.Element) -> None:
    # A bare <svg> root means the author forgot xmlns; treat the document as SVG. All checks
    # below run after the move, so they see exactly what will be stored.
    if root.tag != "svg":
        return
    for elem in root.iter():
        if not elem.tag.startswith("{"):
            elem.tag = f"{{{SVG_NS}}}{elem.tag}"


def _check_root(root: ET.Element) -> None:
    ns, local = _split(root.tag)
    if local != "svg":
        raise SvgRejected(f"root element must be <svg>, not <{local[:40]}>")
    if ns != SVG_NS:
        raise SvgRejected(f'root <svg> must be in the SVG namespace (xmlns="{SVG_NS}")')


def _check_depth(root: ET.Element) -> None:
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SvgRejected(f"elements are nested more than {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in elem)


def _check_element(elem: ET.Element) -> _References:
    """Check one element; what its attributes and (for a <style>) its text reference."""
    ns, local = _split(elem.tag)
    lname = local.lower()
    if lname in _FORBIDDEN_ELEMENTS:
        raise SvgRejected(f"<{local}> elements are not allowed")
    if ns not in _ELEMENT_NAMESPACES:
        where = f"namespace {ns[:60]}" if ns else "no namespace"
        raise SvgRejected(f"<{local[:40]}> in {where} is not allowed; only SVG elements are")
    links_only = lname in _NON_DRAWING_HREF
    drawn: set[str] = set()
    for key, value in elem.attrib.items():
        ids = _check_attribute(local, key, value)
        if not (links_only and _split(key)[1].lower() == "href"):
            drawn |= ids
    styled: set[str] = set()
    if lname == "style":
        if len(elem):
            raise SvgRejected(f"<{local}> may contain only CSS text, not elements")
        css = elem.text or ""
        views = _decoded_views(css)
        _check_css(views, f"<{local}>")
        styled = _url_ids(views)
    return drawn, styled


def _check_attribute(element: str, key: str, value: str) -> set[str]:
    """Check one attribute; the ids it references."""
    ns, local = _split(key)
    lname = local.lower()
    if lname.startswith("on"):
        raise SvgRejected(f"event handler attribute {local[:40]!r} on <{element}> is not allowed")
    if ns not in _ATTRIBUTE_NAMESPACES or (ns == XML_NS and lname not in _XML_ATTRIBUTES):
        name = "xml:" + local if ns == XML_NS else f"{local[:40]}' in namespace '{ns[:60]}"
        raise SvgRejected(f"attribute '{name}' is not allowed")
    if lname in _URL_ATTRIBUTES:
        raise SvgRejected(f"attribute {local!r} on <{element}> is not allowed")
    if lname == "href":
        _check_href(element, value)
    if lname == "attributename":
        _check_animation_target(element, value)
    views = _decoded_views(value)
    _check_css(views, f"attribute {local[:40]!r} on <{element}>")
    return _fragment_id(value) | _url_ids(views)


def _check_href(element: str, value: str) -> None:
    # URL parsers trim surrounding spaces and control characters, so we do too; what is
    # left must be exactly "#id". Anything else, including whitespace inside
    # ("java\nscript:", which browsers also ignore), could leave the document.
    if not _FRAGMENT.fullmatch(value.strip(_URL_TRIM)):
        raise SvgRejected(
            f"<{element}> links to {_preview(value)}; only same-document '#id' links are allowed"
        )


def _check_animation_target(element: str, value: str) -> None:
    # <set attributeName="href" to="javascript:..."> would write a link after our checks.
    target = value.strip().lower().rpartition(":")[2]
    if target == "href" or target in _URL_ATTRIBUTES or target.startswith("on"):
        raise SvgRejected(f"<{element}> may not animate {_preview(value)}")


# --------------------------------------------------------------------------- reference fan-out

# Paint servers that only colour a shape: referencing them draws nothing more.
_WEIGHTLESS = frozenset({"lineargradient", "radialgradient", "stop"})
# Elements whose href names a target without drawing it: a link, or what an animation
# changes. (A link back to the root would otherwise look like a loop.)
_NON_DRAWING_HREF = frozenset(
    {"a", "animate", "animatecolor", "animatemotion", "animatetransform", "discard", "set"}
)
_CSS_URL_ID = re.compile(r"""url\(\s*(['"]?)#([\w.\-:]+)\1\s*\)""", re.IGNORECASE)


# What an element references: ids its attributes draw, and ids its stylesheet text names.
_References = tuple[set[str], set[str]]


def _fragment_id(value: str) -> set[str]:
    """The id of a bare "#id" value (an href), if it is one."""
    trimmed = value.strip(_URL_TRIM)
    return {trimmed[1:]} if _FRAGMENT.fullmatch(trimmed) else set()


def _url_ids(views: tuple[str, ...]) -> set[str]:
    """The ids url(#id) points at in decoded CSS views (ids keep their case)."""
    return {match.group(2) for view in views for match in _CSS_URL_ID.finditer(view)}


def _element_references(elem: ET.Element) -> _References:
    """What `_check_element` finds referenced, without the checks (for any parsed tree)."""
    links_only = _split(elem.tag)[1].lower() in _NON_DRAWING_HREF
    drawn = {
        ident
        for key, value in elem.attrib.items()
        if not (links_only and _split(key)[1].lower() == "href")
        for ident in _fragment_id(value) | _url_ids(_decoded_views(value))
    }
    styled = set()
    if _split(elem.tag)[1].lower() == "style":
        styled = _url_ids(_decoded_views(elem.text or ""))
    return drawn, styled


def expanded_reference_count(
    root: ET.Element,
    stop_above: int | None = None,
    references: dict[int, _References] | None = None,
) -> int:
    """How many elements the document draws through #id references, all expanded.

    An element's expanded size is itself (1, or 0 for a gradient or stop), its children's
    expanded sizes and, for each reference it makes, its target's expanded size. The
    answer is the root's expanded size minus the document's own elements, plus each
    `<style>` reference's target once per element. Raises SvgTooComplex when references
    loop. With `stop_above`, counting stops once the answer is known to exceed it.
    `references` (by `id(element)`) is what the checks found; without it, it is read here.
    A `<style>`'s stylesheet is its own text (the sanitizer refuses elements inside one).
    """
    elements = list(root.iter())
    by_id: dict[str, ET.Element] = {}
    for elem in elements:
        for key in ("id", f"{{{XML_NS}}}id"):
            ident = elem.get(key)
            if ident is not None:
                by_id.setdefault(ident, elem)  # the first wins, as getElementById does

    weight = {id(e): 0 if _split(e.tag)[1].lower() in _WEIGHTLESS else 1 for e in elements}
    if references is None:
        references = {id(elem): _element_references(elem) for elem in elements}
    reference_cache: dict[int, list[ET.Element]] = {}

    def targets(elem: ET.Element) -> list[ET.Element]:
        cached = reference_cache.get(id(elem))
        if cached is None:
            found = references[id(elem)][0]
            if not found:
                return []
            cached = reference_cache[id(elem)] = [by_id[i] for i in sorted(found) if i in by_id]
        return cached

    own = sum(weight.values())
    # Sizes are capped just past the budget, so a bomb's numbers stay small to add.
    cap = own + (stop_above if stop_above is not None else 1 << 62) + 1
    size: dict[int, int] = {}
    on_path: set[int] = set()
    # Iterative depth-first walk over child and reference edges: reference chains can be
    # far longer than the nesting limit, too long for Python's recursion.
    for start in elements:
        if id(start) in size:
            continue
        stack: list[tuple[ET.Element, list[ET.Element]]] = []
        on_path.add(id(start))
        stack.append((start, [*start, *targets(start)]))
        while stack:
            elem, pending = stack[-1]
            if pending:
                nxt = pending.pop()
                if id(nxt) in size:
                    continue
                if not len(nxt) and not targets(nxt):
                    size[id(nxt)] = weight[id(nxt)]  # a leaf: no walk needed
                    continue
                if id(nxt) in on_path:
                    where = nxt.get("id") or nxt.get(f"{{{XML_NS}}}id") or "?"
                    raise SvgTooComplex(f"its #id references loop back to '#{where[:40]}'")
                on_path.add(id(nxt))
                stack.append((nxt, [*nxt, *targets(nxt)]))
                continue
            stack.pop()
            on_path.discard(id(elem))
            total = weight[id(elem)] + sum(size[id(c)] for c in elem)
            total += sum(size[id(t)] for t in targets(elem))
            size[id(elem)] = min(total, cap)
    expanded = size[id(root)] - own
    for elem in elements:
        for ident in sorted(references[id(elem)][1] & by_id.keys()):
            expanded += size[id(by_id[ident])] * len(elements)
            if stop_above is not None and expanded > stop_above:
                return expanded
    return expanded


# --------------------------------------------------------------------------- CSS


def _decode_css_escapes(css: str) -> str:
    def replace(match: re.Match[str]) -> str:
        hex_digits, newline, char = match.groups()
        if hex_digits is not None:
            code = int(hex_digits, 16)
            valid = 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF
            return chr(code) if valid else "\ufffd"
        if newline is not None:
            return ""  # an escaped newline is a line continuation
        return str(char)

    return _CSS_ESCAPE.sub(replace, css)


def _decoded_views(css: str) -> tuple[str, ...]:
    """The CSS decoded two ways (case kept: ids are case-sensitive); none when it has
    nothing that could form a function, an at-rule or an escape.

    Keeping comments catches anything a modern tokenizer sees (even when "/*" sits inside a
    string or is escaped); dropping them catches old parsers that joined "u/**/rl(" into
    url(. Checking both is stricter than either alone.
    """
    if not any(marker in css for marker in ("(", "@", "\\")):
        return ()
    return (_decode_css_escapes(css), _decode_css_escapes(_CSS_COMMENT.sub("", css)))


def _check_css(views: tuple[str, ...], where: str) -> None:
    for view in (view.lower() for view in views):
        for forbidden in _CSS_FORBIDDEN:
            if forbidden in view:
                raise SvgRejected(f"CSS {forbidden!r} in {where} is not allowed")
        for match in re.finditer(r"url\(", view):
            if not _CSS_URL_ARGUMENT.match(view, match.end()):
                raise SvgRejected(f"CSS url() in {where} may only reference '#id'")


def _preview(value: str) -> str:
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


# --------------------------------------------------------------------------- output


def _escape_text(text: str) -> str:
    # \r is escaped because a parser would turn a literal one into \n.
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _escape_attr(value: str) -> str:
    # Whitespace other than space is escaped so attribute-value normalization on re-parse
    # cannot change the value (keeps sanitize idempotent).
    return _escape_text(value).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")


def _qname(name: str) -> str:
    ns, local = _split(name)
    prefix = _PREFIXES[ns] if ns else ""
    return f"{prefix}:{local}" if prefix else local


def _serialize(root: ET.Element) -> str:
    """Write the checked tree with fixed prefixes: `<svg xmlns="...SVG...">` first."""
    used = {_split(name)[0] for elem in root.iter() for name in (elem.tag, *elem.attrib)}
    declarations = "".join(
        f' xmlns:{prefix}="{ns}"'
        for ns, prefix in _PREFIXES.items()
        if ns in used and prefix not in ("", "xml")  # xml: is predeclared
    )
    out: list[str] = []
    _write(root, out, f' xmlns="{SVG_NS}"{declarations}')
    return "".join(out)


def _write(elem: ET.Element, out: list[str], declarations: str = "") -> None:
    # Recursion is bounded by MAX_DEPTH, checked before serializing.
    name = _qname(elem.tag)
    out.append(f"<{name}{declarations}")
    out.extend(f' {_qname(key)}="{_escape_attr(value)}"' for key, value in elem.attrib.items())
    if not elem.text and len(elem) == 0:
        out.append("/>")
        return
    out.append(">")
    if elem.text:
        out.append(_escape_text(elem.text))
    for child in elem:
        _write(child, out)
        if child.tail:
            out.append(_escape_text(child.tail))
    out.append(f"</{name}>")
