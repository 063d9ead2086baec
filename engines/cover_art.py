"""Deterministic generative cover art, rendered as a self-contained SVG.

Every visual decision (palette, motif, shape count/position/size/rotation) is drawn from a
local PRNG seeded with sha256 of (prompt, seed, visual_version). A cover can therefore be
re-rendered byte-for-byte from the track row alone, so it never has to be stored to stay
stable, and bumping `visual_version` is the "re-roll the artwork" knob.

Two properties are pinned to the version number rather than left to chance, so a re-roll is
always visibly different from the previous one: the base hue turns by the golden angle per
version, and the main motif cycles through the motif families.

The output references nothing outside itself (no fonts, images or scripts), and all text is
XML-escaped, because the title comes straight from user input.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

MAX_TITLE_CHARS = 40
_UNTITLED = "Untitled"
_GOLDEN_ANGLE = 137.508  # degrees; successive multiples stay maximally far apart on the wheel
_SANS = "Inter, 'Helvetica Neue', Helvetica, Arial, sans-serif"

# A prompt's mood words steer the first version's base hue (degrees), so "warm sunset pad"
# starts out warm; re-rolls still walk the whole wheel. First match in the prompt wins.
_MOOD_HUES: tuple[tuple[frozenset[str], float], ...] = (
    (frozenset({"warm", "sunset", "fire", "summer", "desert", "autumn", "golden"}), 28.0),
    (frozenset({"cold", "ice", "winter", "ocean", "sea", "rain", "underwater"}), 205.0),
    (frozenset({"forest", "nature", "jungle", "garden", "spring"}), 120.0),
    (frozenset({"night", "dark", "space", "cosmic", "dream", "dreamy"}), 250.0),
    (frozenset({"love", "romantic", "pink", "sweet"}), 335.0),
    (frozenset({"angry", "aggressive", "metal", "blood", "red"}), 2.0),
)

# Hue offsets (degrees from the base hue) of the primary, secondary and highlight colours.
_SCHEMES: tuple[tuple[float, float, float], ...] = (
    (20.0, -25.0, 45.0),  # analogous: calm, one family of colour
    (0.0, 180.0, 200.0),  # complementary: strong contrast
    (0.0, 150.0, 210.0),  # split-complementary: contrast with less tension
    (0.0, 120.0, 240.0),  # triadic: playful, evenly spread
)


# --------------------------------------------------------------------------- hashing / text


def _rng(stream: str, prompt: str, seed: int, *extra: int) -> random.Random:
    """A private PRNG for one named stream of decisions.

    JSON keeps the parts unambiguous (no separator can be forged by the prompt) and,
    with ASCII escaping, even lone surrogates from a bad client hash without error.
    Separate streams mean a palette tweak never reshuffles the layout and vice versa.
    """
    payload = json.dumps([stream, prompt, seed, *extra], ensure_ascii=True).encode("ascii")
    return random.Random(int.from_bytes(hashlib.sha256(payload).digest(), "big"))


def _is_xml_char(ch: str) -> bool:
    # XML 1.0 forbids most control characters and non-characters even when escaped, so
    # they have to be dropped rather than escaped or the document would not parse.
    cp = ord(ch)
    return (
        cp in (0x9, 0xA, 0xD)
        or 0x20 <= cp <= 0xD7FF
        or 0xE000 <= cp <= 0xFFFD
        or 0x10000 <= cp <= 0x10FFFF
    )


def _esc(text: str) -> str:
    """Escape text for use in both element content and quoted attribute values."""
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def cover_title(prompt: str, title: str | None = None) -> str:
    """The text printed on the cover: explicit title or the prompt, tidied and truncated.

    Whitespace runs collapse to one space (prompts are often multi-line) and the result is
    cut to MAX_TITLE_CHARS code points with an ellipsis so it fits on one line.
    """
    raw = title if title is not None else prompt
    clean = " ".join("".join(ch for ch in raw if _is_xml_char(ch)).split())
    if not clean:
        return _UNTITLED
    if len(clean) > MAX_TITLE_CHARS:
        clean = clean[: MAX_TITLE_CHARS - 1].rstrip() + "\u2026"
    return clean


# --------------------------------------------------------------------------- palette


def _hsl_hex(hue: float, sat: float, light: float) -> str:
    r, g, b = colorsys.hls_to_rgb((hue % 360.0) / 360.0, light, sat)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def palette_for(prompt: str, seed: int, visual_version: int) -> list[str]:
    """Five hex colours, ordered: deep background, background, primary, secondary, highlight.

    Backgrounds are always dark and the highlight always light, so the white title stays
    legible and the UI can use the colours by role without checking contrast.
    """
    identity = _rng("identity", prompt, seed)
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    mood = next((hue for keys, hue in _MOOD_HUES if keys & words), None)
    first = identity.uniform(0.0, 360.0) if mood is None else mood + identity.uniform(-15.0, 15.0)
    base = (first + (visual_version - 1) * _GOLDEN_ANGLE) % 360.0
    rng = _rng("palette", prompt, seed, visual_version)
    p_off, s_off, h_off = rng.choice(_SCHEMES)
    # Overall saturation; capped below neon, which looks cheap at full-cover scale.
    vivid = rng.uniform(0.5, 0.78)
    return [
        _hsl_hex(base, vivid * 0.7, rng.uniform(0.07, 0.11)),
        _hsl_hex(base + rng.uniform(-25.0, 25.0), vivid * 0.6, rng.uniform(0.2, 0.28)),
        _hsl_hex(base + p_off, vivid, rng.uniform(0.5, 0.58)),
        _hsl_hex(base + s_off, vivid * 0.9, rng.uniform(0.56, 0.66)),
        _hsl_hex(base + h_off, vivid + 0.15, rng.uniform(0.8, 0.87)),
    ]


# --------------------------------------------------------------------------- drawing


def _n(value: float) -> str:
    # One decimal is invisible at cover sizes, keeps the file small, and hides last-bit
    # differences between platforms' math libraries so output stays byte-identical.
    return f"{value:.1f}"


@dataclass(frozen=True)
class _Canvas:
    size: float
    prefix: str  # per-cover id prefix, so several covers inlined in one page don't collide
    colors: list[str]

    def ref(self, name: str) -> str:
        return f"url(#{self.prefix}-{name})"

    @property
    def inks(self) -> list[str]:
        """Colours that read well on the dark background (primary, secondary, highlight)."""
        return self.colors[2:]


def _orbs(rng: random.Random, c: _Canvas) -> list[str]:
    """Soft, overlapping glowing discs, like out-of-focus stage lights."""
    out = []
    for _ in range(rng.randint(5, 9)):
        out.append(
            f'<circle cx="{_n(c.size * rng.uniform(0.08, 0.92))}" '
            f'cy="{_n(c.size * rng.uniform(0.08, 0.7))}" '
            f'r="{_n(c.size * rng.uniform(0.06, 0.3))}" '
            f'fill="{c.ref(f"orb{rng.randrange(3)}")}" opacity="{rng.uniform(0.5, 0.95):.2f}"/>'
        )
    return out


def _arcs(rng: random.Random, c: _Canvas) -> list[str]:
    """Concentric partial rings around one centre, like a record groove or a ripple."""
    cx, cy = c.size * rng.uniform(0.3, 0.7), c.size * rng.uniform(0.28, 0.52)
    # Ring spacing keeps even a 12-ring stack inside the canvas.
    radius, step = c.size * rng.uniform(0.06, 0.1), c.size * rng.uniform(0.018, 0.03)
    out = []
    for _ in range(rng.randint(6, 12)):
        start = math.radians(rng.uniform(0.0, 360.0))
        sweep = math.radians(rng.uniform(50.0, 300.0))
        x0, y0 = cx + radius * math.cos(start), cy + radius * math.sin(start)
        x1, y1 = cx + radius * math.cos(start + sweep), cy + radius * math.sin(start + sweep)
        large = 1 if sweep > math.pi else 0
        out.append(
            f'<path d="M{_n(x0)} {_n(y0)}A{_n(radius)} {_n(radius)} 0 {large} 1 '
            f'{_n(x1)} {_n(y1)}" fill="none" stroke="{rng.choice(c.inks)}" '
            f'stroke-width="{_n(c.size * rng.uniform(0.004, 0.022))}" '
            f'stroke-linecap="round" opacity="{rng.uniform(0.55, 1.0):.2f}"/>'
        )
        radius += step
    return out


def _waves(rng: random.Random, c: _Canvas) -> list[str]:
    """Stacked tapering sine lines, a nod to the waveform the track is made of."""
    lines = rng.randint(5, 9)
    y = c.size * rng.uniform(0.3, 0.42)
    gap = c.size * rng.uniform(0.025, 0.05)
    cycles = rng.uniform(1.2, 3.5)
    samples = 64
    out = []
    for i in range(lines):
        amp = c.size * rng.uniform(0.03, 0.12)
        phase = rng.uniform(0.0, math.tau) + i * 0.35  # drift so lines interleave
        pts = []
        for k in range(samples + 1):
            t = k / samples
            envelope = math.sin(math.pi * t)  # taper to zero at both edges
            pts.append(
                f"{_n(c.size * t)} "
                f"{_n(y + amp * envelope * math.sin(math.tau * cycles * t + phase))}"
            )
        out.append(
            f'<path d="M{"L".join(pts)}" fill="none" stroke="{c.inks[i % 3]}" '
            f'stroke-width="{_n(c.size * rng.uniform(0.003, 0.012))}" '
            f'stroke-linejoin="round" opacity="{rng.uniform(0.5, 0.95):.2f}"/>'
        )
        y += gap
    return out


def _polygons(rng: random.Random, c: _Canvas) -> list[str]:
    """Translucent rotated polygons, some filled and some outlined, for a geometric feel."""
    out = []
    for _ in range(rng.randint(4, 8)):
        sides = rng.randint(3, 6)
        radius = c.size * rng.uniform(0.07, 0.26)
        cx, cy = c.size * rng.uniform(0.12, 0.88), c.size * rng.uniform(0.1, 0.65)
        turn = rng.uniform(0.0, math.tau)
        pts = " ".join(
            f"{_n(cx + radius * math.cos(turn + math.tau * k / sides))},"
            f"{_n(cy + radius * math.sin(turn + math.tau * k / sides))}"
            for k in range(sides)
        )
        color = rng.choice(c.inks)
        if rng.random() < 0.55:
            paint = f'fill="{color}" fill-opacity="{rng.uniform(0.3, 0.7):.2f}"'
        else:
            width = _n(c.size * rng.uniform(0.004, 0.012))
            paint = f'fill="none" stroke="{color}" stroke-width="{width}" stroke-linejoin="round"'
        out.append(f'<polygon points="{pts}" {paint}/>')
    return out


_MOTIFS: tuple[Callable[[random.Random, _Canvas], list[str]], ...] = (
    _orbs,
    _arcs,
    _waves,
    _polygons,
)


def _particles(rng: random.Random, c: _Canvas) -> list[str]:
    """A light dusting of small dots that ties the motif into the background."""
    return [
        f'<circle cx="{_n(c.size * rng.uniform(0.03, 0.97))}" '
        f'cy="{_n(c.size * rng.uniform(0.03, 0.75))}" '
        f'r="{_n(c.size * rng.uniform(0.0015, 0.005))}" fill="{c.colors[4]}" '
        f'opacity="{rng.uniform(0.25, 0.85):.2f}"/>'
        for _ in range(rng.randint(14, 32))
    ]


def _defs(rng: random.Random, c: _Canvas) -> str:
    p = c.prefix
    angle = rng.uniform(0.0, 360.0)
    dx, dy = math.cos(math.radians(angle)) / 2, math.sin(math.radians(angle)) / 2
    orbs = "".join(
        f'<radialGradient id="{p}-orb{i}">'
        f'<stop offset="0" stop-color="{color}" stop-opacity="0.95"/>'
        f'<stop offset="0.55" stop-color="{color}" stop-opacity="0.45"/>'
        f'<stop offset="1" stop-color="{color}" stop-opacity="0"/></radialGradient>'
        for i, color in enumerate(c.inks)
    )
    return (
        "<defs>"
        # Background direction is random so covers in a grid don't all light from one side.
        f'<linearGradient id="{p}-bg" x1="{0.5 - dx:.3f}" y1="{0.5 - dy:.3f}" '
        f'x2="{0.5 + dx:.3f}" y2="{0.5 + dy:.3f}">'
        f'<stop offset="0" stop-color="{c.colors[1]}"/>'
        f'<stop offset="1" stop-color="{c.colors[0]}"/></linearGradient>'
        f'<radialGradient id="{p}-glow">'
        f'<stop offset="0" stop-color="{c.colors[2]}" stop-opacity="0.5"/>'
        f'<stop offset="1" stop-color="{c.colors[2]}" stop-opacity="0"/></radialGradient>'
        f"{orbs}"
        # Darkens the bottom band so the title is legible over any motif.
        f'<linearGradient id="{p}-scrim" x1="0" y1="0" x2="0" y2="1">'
        f'<stop offset="0" stop-color="{c.colors[0]}" stop-opacity="0"/>'
        f'<stop offset="1" stop-color="{c.colors[0]}" stop-opacity="0.92"/></linearGradient>'
        # Film grain: breaks up gradient banding and makes flat vector art feel printed.
        f'<filter id="{p}-grain" x="0" y="0" width="100%" height="100%">'
        f'<feTurbulence type="fractalNoise" baseFrequency="0.85" numOctaves="2" '
        f'seed="{rng.randrange(1000)}" stitchTiles="stitch"/>'
        '<feColorMatrix type="saturate" values="0"/></filter>'
        "</defs>"
    )


def _title_block(title: str, c: _Canvas, label: str) -> list[str]:
    s = c.size
    # Estimate the rendered width (~0.6 em per glyph in a sans-serif) and shrink long titles
    # so they fit in one line between the margins instead of running off the edge.
    font = min(s * 0.058, s * 0.84 / (max(len(title), 1) * 0.6))
    base_y = s * 0.915
    return [
        f'<rect y="{_n(s * 0.62)}" width="{_n(s)}" height="{_n(s * 0.38)}" '
        f'fill="{c.ref("scrim")}"/>',
        f'<text x="{_n(s * 0.08)}" y="{_n(base_y - font * 1.35)}" font-family="{_SANS}" '
        f'font-size="{_n(s * 0.021)}" font-weight="600" letter-spacing="{_n(s * 0.006)}" '
        f'fill="{c.colors[4]}" opacity="0.85">{_esc(label)}</text>',
        f'<text x="{_n(s * 0.08)}" y="{_n(base_y)}" font-family="{_SANS}" '
        f'font-size="{_n(font)}" font-weight="700" fill="#ffffff">{_esc(title)}</text>',
    ]


def render_cover_svg(
    prompt: str,
    seed: int,
    visual_version: int,
    *,
    title: str | None = None,
    size: int = 1024,
) -> str:
    """Render the cover for one track as an SVG document string (square, `size` px)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    colors = palette_for(prompt, seed, visual_version)
    prefix = f"sf{_rng('ids', prompt, seed, visual_version).getrandbits(32):08x}"
    c = _Canvas(float(size), prefix, colors)
    rng = _rng("layout", prompt, seed, visual_version)

    # The main motif family steps with the version (offset per prompt/seed), so a re-roll
    # never repeats the previous family; the faint echo behind it is free to vary.
    start = _rng("identity-motif", prompt, seed).randrange(len(_MOTIFS))
    main = _MOTIFS[(start + visual_version) % len(_MOTIFS)]
    echo = rng.choice([m for m in _MOTIFS if m is not main])
    tilt = rng.uniform(-20.0, 20.0)
    glow_x, glow_y = size * rng.uniform(0.2, 0.8), size * rng.uniform(0.15, 0.55)
    centre = f"{_n(size / 2)} {_n(size / 2)}"

    title_text = cover_title(prompt, title)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" '
        f'width="{size}" height="{size}" role="img">',
        f"<title>{_esc(title_text)}</title>",
        _defs(rng, c),
        f'<rect width="{size}" height="{size}" fill="{c.ref("bg")}"/>',
        f'<circle cx="{_n(glow_x)}" cy="{_n(glow_y)}" r="{_n(size * 0.55)}" '
        f'fill="{c.ref("glow")}"/>',
        f'<g opacity="0.28" transform="rotate({_n(-tilt)} {centre})">',
        *echo(rng, c),
        "</g>",
        f'<g id="{prefix}-motif" transform="rotate({_n(tilt)} {centre})">',
        *main(rng, c),
        "</g>",
        *_particles(rng, c),
        f'<rect width="{size}" height="{size}" filter="{c.ref("grain")}" opacity="0.09"/>',
        *_title_block(title_text, c, f"SOUNDFOUNDRY \u00b7 V{visual_version}"),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"
