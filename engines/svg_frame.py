"""Framing an SVG for a preview: the same drawing in a square of a fixed size."""

from __future__ import annotations

import re

# Root start tag of a serialized SVG. Both writers (engines.cover_art and the sanitizer's)
# escape ">" inside attribute values, so the first ">" ends the tag.
_ROOT = re.compile(r"\A\s*<svg\b([^>]*?)(/?)>")
_ATTRIBUTE = re.compile(r'\s([^\s=]+)="([^"]*)"')
_LENGTH = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(px|in|cm|mm|pt|pc)?\s*")
_PX_PER_UNIT = {"px": 1.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4, "pt": 96 / 72, "pc": 16.0}


def square_svg(svg: str, size_px: int) -> str:
    """The same document sized `size_px` by `size_px`, its drawing centred with its aspect
    kept, so every preview has one shape whatever the document's size or units.

    Only the root's width, height, viewBox and preserveAspectRatio change. A missing
    viewBox is derived from absolute width and height (what the browser would draw).
    """
    root = _ROOT.match(svg)
    if root is None:
        return svg  # not ours to rewrite; resvg reports what is wrong with it
    attributes = dict(_ATTRIBUTE.findall(root.group(1)))
    view_box = attributes.pop("viewBox", None)
    width, height = attributes.pop("width", None), attributes.pop("height", None)
    attributes.pop("preserveAspectRatio", None)
    if view_box is None and width and height:
        sizes = [_LENGTH.fullmatch(width), _LENGTH.fullmatch(height)]
        if sizes[0] and sizes[1]:
            w, h = (float(m.group(1)) * _PX_PER_UNIT[m.group(2) or "px"] for m in sizes if m)
            view_box = f"0 0 {w:g} {h:g}"
    attributes |= {"width": str(size_px), "height": str(size_px)}
    attributes["preserveAspectRatio"] = "xMidYMid meet"
    if view_box is not None:
        attributes["viewBox"] = view_box
    tag = "<svg" + "".join(f' {k}="{v}"' for k, v in attributes.items())
    return f"{tag}{root.group(2)}>{svg[root.end() :]}"
