"""Procedural music for the local synth provider: plan, score and a chunked renderer.

Three pure stages, so a 300 s track never exists in memory at once:

1. `plan_music(request)` picks key, mode, tempo, chord progression and timbres from a
   hash of prompt + seed (nudged by a few mood words in the prompt).
2. `compose(plan)` writes the score: a list of `Note`s (pad chords, bass, lead melody
   with echoes, kick/snare/hats) laid out over sections (intro, main, breakdown, outro).
3. `SynthRenderer(plan).render(start, frames)` renders any span of the track from the
   score alone. Every sample depends only on its absolute position, so chunk
   boundaries never click and the same request always gives the same samples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

import engines.blas  # noqa: F401  single-threaded BLAS, before any numpy work
from core.contracts import GenerationRequest

SAMPLE_RATE = 44_100
CHANNELS = 2
BEATS_PER_BAR = 4

FloatArray = npt.NDArray[np.float64]
Table = npt.NDArray[np.float32]

# Peak level of the master: a soft knee above _LIMIT_KNEE approaches this ceiling (-1 dBFS)
# without ever reaching it, so no sample can clip whatever the arrangement stacks up.
_CEILING = 10 ** (-1.0 / 20)
_LIMIT_KNEE = 0.6
# The probe render sets the master gain so the busiest bars peak here (before the knee).
_PROBE_TARGET_PEAK = 1.0
_FADE_IN_S = 0.02
_FADE_OUT_MAX_S = 1.5

_TABLE_SIZE = 4096  # a power of two: phases wrap with a bit mask

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)

# Chord progressions as 0-based scale degrees, one chord per bar.
_MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 5, 3, 4), (5, 3, 0, 4), (0, 3, 5, 4), (1, 4, 0, 5))
_MINOR_PROGRESSIONS = ((0, 5, 2, 6), (0, 3, 5, 4), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4))

# Melody rhythms for one bar: (start, length) in eighth notes.
_MELODY_RHYTHMS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((0, 2), (2, 2), (4, 2), (6, 2)),
    ((0, 3), (3, 1), (4, 4)),
    ((0, 1), (1, 1), (2, 2), (4, 1), (5, 1), (6, 2)),
    ((0, 2), (3, 1), (4, 2), (6, 2)),
    ((0, 4), (4, 2), (6, 2)),
    ((1, 1), (2, 2), (4, 3)),
)
_CADENCE_RHYTHM = ((0, 2), (2, 6))

# Bass patterns: (start, length) in eighths, and the scale steps above the chord root
# (0 root, 4 fifth, 7 octave), so every bass note stays in the key.
_BASS_PATTERNS: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((0, 2, 0), (2, 2, 0), (4, 2, 0), (6, 2, 0)),
    ((0, 3, 0), (3, 1, 0), (4, 2, 4), (6, 2, 0)),
    ((0, 1, 0), (1, 1, 0), (2, 1, 7), (3, 1, 0), (4, 1, 0), (5, 1, 0), (6, 1, 4), (7, 1, 0)),
    ((0, 4, 0), (4, 3, 4), (7, 1, 0)),
)

_SLOW_WORDS = frozenset(
    [
        "slow",
        "chill",
        "calm",
        "ambient",
        "lofi",
        "lo-fi",
        "relaxing",
        "relaxed",
        "sleep",
        "peaceful",
        "meditation",
        "ballad",
        "soft",
        "gentle",
        "dreamy",
    ]
)
_FAST_WORDS = frozenset(
    [
        "fast",
        "energetic",
        "dance",
        "upbeat",
        "house",
        "techno",
        "edm",
        "running",
        "workout",
        "party",
        "driving",
    ]
)
_MINOR_WORDS = frozenset(
    [
        "sad",
        "dark",
        "melancholic",
        "melancholy",
        "moody",
        "night",
        "rain",
        "rainy",
        "lonely",
        "minor",
        "noir",
        "mysterious",
        "cinematic",
        "tense",
        "somber",
    ]
)
_MAJOR_WORDS = frozenset(
    [
        "happy",
        "bright",
        "sunny",
        "uplifting",
        "joyful",
        "cheerful",
        "summer",
        "major",
        "hopeful",
        "playful",
    ]
)


class Voice(StrEnum):
    PAD = "pad"
    BASS = "bass"
    LEAD = "lead"
    KICK = "kick"
    SNARE = "snare"
    HAT = "hat"


class LeadTimbre(StrEnum):
    PLUCK = "pluck"
    SQUARE = "square"
    MALLET = "mallet"
    VOICE = "voice"  # "sung" lead for vocal requests: formants and vibrato


@dataclass(frozen=True)
class MusicPlan:
    """Everything musical about a track, decided up front from the request."""

    seed: int
    duration_s: int
    total_frames: int
    tempo_bpm: float
    key_root_midi: int  # the tonic around the pad register's bottom (A2..G#3)
    minor: bool
    progression: tuple[int, ...]
    swing: float  # fraction of an eighth note the off-beats are delayed
    pad_detune_cents: float
    pad_attack_s: float
    brightness: float  # 0..1: how open the pad "filter" is
    lead_timbre: LeadTimbre
    bass_pattern: int
    style_strength: float

    @property
    def beat_s(self) -> float:
        return 60.0 / self.tempo_bpm

    @property
    def bar_s(self) -> float:
        return BEATS_PER_BAR * self.beat_s

    @property
    def n_bars(self) -> int:
        return math.ceil(self.duration_s / self.bar_s)


@dataclass(frozen=True)
class Note:
    start_s: float
    gate_s: float  # how long the note is held; the release follows
    voice: Voice
    midi: float = 0.0
    velocity: float = 1.0
    pan: float = 0.0  # -1 left .. 1 right
    variant: int = 0  # voice-specific (the vowel for a sung lead)


def plan_music(request: GenerationRequest) -> MusicPlan:
    """Derive the musical plan deterministically from prompt + seed (and the style knobs)."""
    digest = hashlib.sha256(f"{request.prompt.strip().lower()}\x00{request.seed}".encode())
    seed = int.from_bytes(digest.digest()[:8], "big")
    rng = np.random.default_rng(seed)
    words = set(request.prompt.lower().replace(",", " ").replace(".", " ").split())
    style = float(np.clip(request.style_strength, 0.0, 1.0))

    if words & _SLOW_WORDS and not words & _FAST_WORDS:
        low, high = 70, 92
    elif words & _FAST_WORDS and not words & _SLOW_WORDS:
        low, high = 112, 130
    else:
        low, high = 70, 130
    tempo = float(rng.integers(low, high + 1))

    if words & _MINOR_WORDS and not words & _MAJOR_WORDS:
        minor = True
    elif words & _MAJOR_WORDS and not words & _MINOR_WORDS:
        minor = False
    else:
        minor = bool(rng.random() < 0.5)
    progressions = _MINOR_PROGRESSIONS if minor else _MAJOR_PROGRESSIONS

    timbres = (LeadTimbre.PLUCK, LeadTimbre.SQUARE, LeadTimbre.MALLET)
    lead = LeadTimbre.VOICE if request.has_vocals else timbres[int(rng.integers(len(timbres)))]
    return MusicPlan(
        seed=seed,
        duration_s=request.duration_s,
        total_frames=request.duration_s * SAMPLE_RATE,
        tempo_bpm=tempo,
        key_root_midi=45 + int(rng.integers(12)),
        minor=minor,
        progression=progressions[int(rng.integers(len(progressions)))],
        swing=0.12 if tempo < 95 and rng.random() < 0.5 else 0.0,
        pad_detune_cents=float(rng.uniform(6.0, 16.0)),
        pad_attack_s=float(rng.uniform(0.3, 0.9)),
        brightness=float(np.clip(rng.uniform(0.3, 0.7) + 0.3 * (style - 0.5), 0.0, 1.0)),
        lead_timbre=lead,
        bass_pattern=int(rng.integers(len(_BASS_PATTERNS))),
        style_strength=style,
    )


# --------------------------------------------------------------------------- score


def degree_to_midi(plan: MusicPlan, degree: int, octave_offset: int = 0) -> int:
    scale = _MINOR if plan.minor else _MAJOR
    octave, step = divmod(degree, 7)
    return plan.key_root_midi + 12 * (octave + octave_offset) + scale[step]


def section_of(plan: MusicPlan, bar: int) -> str:
    """Arrangement: a short intro, the main groove, a breakdown in long tracks, an outro."""
    n = plan.n_bars
    intro = 0 if n < 8 else 1 if n < 16 else 2 if n < 32 else 4
    if bar < intro:
        return "intro"
    if n >= 16 and bar >= n - 2:
        return "outro"
    if n >= 32:
        breakdown = (int(n * 0.55) // 4) * 4
        if breakdown <= bar < breakdown + 4:
            return "breakdown"
    return "main"


def compose(plan: MusicPlan) -> list[Note]:
    """The whole score. Notes may run past the end; the renderer cuts them."""
    notes: list[Note] = []
    for bar in range(plan.n_bars):
        section = section_of(plan, bar)
        chord = plan.progression[bar % len(plan.progression)]
        start = bar * plan.bar_s
        notes += _pad_bar(plan, start, chord)
        if section in ("main", "outro"):
            notes += _bass_bar(plan, start, chord)
        # The outro keeps only the kick and hats of the intro under the last chords.
        notes += _drum_bar(plan, bar, start, "intro" if section == "outro" else section)
        if section in ("main", "breakdown") and bar >= 1:
            notes += _lead_bar(plan, bar, start, chord)
    return notes


def _eighth_time(plan: MusicPlan, bar_start: float, eighth: float) -> float:
    """Time of an eighth-note position in a bar, with off-beats swung."""
    swing = plan.swing * (plan.beat_s / 2) if int(eighth) % 2 == 1 else 0.0
    return bar_start + eighth * plan.beat_s / 2 + swing


def _chord_tones(chord: int) -> tuple[int, int, int]:
    return chord, chord + 2, chord + 4


def _pad_bar(plan: MusicPlan, start: float, chord: int) -> list[Note]:
    # Fold the triad into the octave above the tonic so chords move smoothly (voice leading).
    notes = []
    for i, degree in enumerate(_chord_tones(chord)):
        midi = degree_to_midi(plan, degree % 7)
        pan = (-0.5, 0.0, 0.5)[i]
        notes.append(Note(start, plan.bar_s + 0.05, Voice.PAD, midi, 0.55, pan))
    return notes


def _bass_bar(plan: MusicPlan, start: float, chord: int) -> list[Note]:
    notes = []
    for eighth, length, steps in _BASS_PATTERNS[plan.bass_pattern]:
        midi = degree_to_midi(plan, chord % 7 + steps, octave_offset=-1)
        gate = length * plan.beat_s / 2 * 0.85
        velocity = 0.9 if eighth % 4 == 0 else 0.75
        notes.append(Note(_eighth_time(plan, start, eighth), gate, Voice.BASS, midi, velocity))
    return notes


def _drum_bar(plan: MusicPlan, bar: int, start: float, section: str) -> list[Note]:
    # Kick on every beat keeps the pulse unambiguous; style strength adds hat density.
    rng = np.random.default_rng([plan.seed, bar, 1])
    style = plan.style_strength
    level = 0.8 + 0.4 * style
    notes: list[Note] = []
    if section != "breakdown":
        kick_velocity = level * (0.7 if section == "intro" else 1.0)
        for beat in range(BEATS_PER_BAR):
            notes.append(Note(start + beat * plan.beat_s, 0.0, Voice.KICK, velocity=kick_velocity))
    if section == "main":
        for beat in (1, 3):
            velocity = level * float(rng.uniform(0.85, 1.0))
            notes.append(
                Note(start + beat * plan.beat_s, 0.0, Voice.SNARE, velocity=velocity, pan=-0.15)
            )
        if style > 0.8:
            notes.append(
                Note(
                    _eighth_time(plan, start, 7), 0.0, Voice.SNARE, velocity=0.25 * level, pan=-0.15
                )
            )
    if section == "intro" and bar == 0:
        return notes
    if style < 0.3:
        positions = [1.0, 3.0, 5.0, 7.0]
    elif style < 0.7:
        positions = [float(e) for e in range(8)]
    else:
        positions = [e / 2 for e in range(16)]
    for pos in positions:
        on_eighth = pos == int(pos)
        accent = 1.0 if on_eighth and int(pos) % 2 == 1 else 0.7 if on_eighth else 0.4
        velocity = 0.8 * level * accent * float(rng.uniform(0.8, 1.0))
        if section == "breakdown":
            velocity *= 0.6
        time = _eighth_time(plan, start, pos) if on_eighth else start + pos * plan.beat_s / 2
        notes.append(Note(time, 0.0, Voice.HAT, velocity=velocity, pan=0.3))
    return notes


def _lead_bar(plan: MusicPlan, bar: int, start: float, chord: int) -> list[Note]:
    """One bar of melody. Phrases are 4 bars and repeat as call and response over 8 bars."""
    in_phrase = bar % 4
    half = "A" if bar % 8 < 4 or in_phrase < 2 else "B"
    rng = np.random.default_rng([plan.seed, in_phrase, ord(half)])
    rhythm = (
        _CADENCE_RHYTHM
        if in_phrase == 3
        else _MELODY_RHYTHMS[int(rng.integers(len(_MELODY_RHYTHMS)))]
    )
    # Melody degrees (5..16) sit mostly in the octave above the pad.
    root = chord % 7
    chord_tones = [d for d in (root + 7, root + 9, root + 11, root + 14) if d <= 16]
    previous = int(rng.choice(chord_tones))
    notes = []
    for index, (eighth, length) in enumerate(rhythm):
        strong = eighth % 2 == 0
        if in_phrase == 3 and index == len(rhythm) - 1:
            degree = 7 if rng.random() < 0.6 else chord_tones[0]  # resolve home
        elif strong:
            degree = min(chord_tones, key=lambda d: (abs(d - previous), d))
            if rng.random() < 0.4:
                degree = int(rng.choice(chord_tones))
        else:
            degree = previous + int(rng.choice((-2, -1, 1, 2)))
        degree = int(np.clip(degree, 5, 16))
        previous = degree
        midi = degree_to_midi(plan, degree)
        time = _eighth_time(plan, start, eighth)
        gate = length * plan.beat_s / 2 * 0.9
        velocity = float(rng.uniform(0.75, 1.0))
        vowel = int(rng.integers(2))
        notes.append(Note(time, gate, Voice.LEAD, midi, velocity, 0.15, vowel))
        # A dotted-eighth echo on the other side gives space without a reverb tail.
        echo = time + 0.75 * plan.beat_s
        notes.append(Note(echo, gate, Voice.LEAD, midi, velocity * 0.3, -0.5, vowel))
    return notes


# --------------------------------------------------------------------------- sounds


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def harmonic_table(amplitudes: npt.ArrayLike) -> Table:
    """One band-limited cycle with the given harmonic amplitudes, peak 1, plus a guard point.

    Summing only harmonics below Nyquist is what keeps saws and squares free of aliasing.
    """
    amps = np.asarray(amplitudes, dtype=np.float64)
    x = np.arange(_TABLE_SIZE + 1) / _TABLE_SIZE
    k = np.arange(1, len(amps) + 1)
    table = (amps[:, None] * np.sin(2 * np.pi * k[:, None] * x[None, :])).sum(axis=0)
    return (table / np.max(np.abs(table))).astype(np.float32)


def wavetable_osc(table: Table, cycles: FloatArray) -> Table:
    """Read a table at the given phases (in cycles, >= 0) with linear interpolation."""
    # float32 samples and a power-of-two wrap keep this, the hot loop, cheap.
    position = cycles * _TABLE_SIZE
    whole = position.astype(np.int64)
    frac = (position - whole).astype(np.float32)
    index = whole & (_TABLE_SIZE - 1)
    low = table.take(index)
    return low + frac * (table.take(index + 1) - low)


def adsr(
    t: FloatArray, gate: float, attack: float, decay: float, sustain: float, release: float
) -> FloatArray:
    """Attack-decay-sustain-release envelope at note-local times t (seconds)."""
    attack = max(attack, 1e-4)

    def held(x: FloatArray) -> FloatArray:
        rising = np.minimum(x / attack, 1.0)
        falling = sustain + (1.0 - sustain) * np.exp(-np.maximum(x - attack, 0.0) / decay)
        return np.asarray(np.where(x < attack, rising, falling), dtype=np.float64)

    level_at_gate = float(held(np.array([gate]))[0])
    # Quadratic release reaches exactly zero, so the cut at the note's end is silent.
    tail = level_at_gate * np.clip(1.0 - (t - gate) / release, 0.0, 1.0) ** 2
    return np.asarray(np.where(t < gate, held(t), tail), dtype=np.float64)


def _formant_amplitudes(f0: float, vowel: int) -> FloatArray:
    """Harmonic amplitudes of a sung vowel: a glottal-like slope shaped by three formants."""
    formants = ((730, 1090, 2440), (570, 840, 2410))[vowel % 2]
    n = max(1, min(40, int(7000 / f0)))
    freqs = f0 * np.arange(1, n + 1)
    shape = sum(
        gain / (1.0 + ((freqs - f) / bw) ** 2)
        for f, bw, gain in zip(formants, (90, 110, 170), (1.0, 0.6, 0.25), strict=True)
    )
    return np.asarray((0.15 + np.asarray(shape)) / np.arange(1, n + 1) ** 0.6, dtype=np.float64)


@dataclass(frozen=True)
class _Envelope:
    attack: float
    decay: float
    sustain: float
    release: float


_LEAD_ENVELOPES = {
    LeadTimbre.PLUCK: _Envelope(0.004, 0.25, 0.2, 0.12),
    LeadTimbre.SQUARE: _Envelope(0.01, 0.2, 0.6, 0.08),
    LeadTimbre.MALLET: _Envelope(0.002, 0.45, 0.05, 0.3),
    LeadTimbre.VOICE: _Envelope(0.07, 0.3, 0.8, 0.15),
}
# Harmonic recipes: a soft saw, a hollow square (odd harmonics), and a marimba-like
# mallet whose strong 4th and 10th harmonics stand in for a bar's overtones.
_LEAD_HARMONICS: dict[LeadTimbre, list[float]] = {
    LeadTimbre.PLUCK: [1.0 / k**1.3 for k in range(1, 13)],
    LeadTimbre.SQUARE: [(1.0 / k if k % 2 else 0.0) for k in range(1, 12)],
    LeadTimbre.MALLET: [1.0, 0.0, 0.0, 0.35, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
}
_BASS_ENVELOPE = _Envelope(0.005, 0.25, 0.55, 0.05)
_PAD_RELEASE_S = 1.2
_VOICE_GAIN = {
    Voice.PAD: 0.16,
    Voice.BASS: 0.42,
    Voice.LEAD: 0.2,
    Voice.KICK: 0.9,
    Voice.SNARE: 0.45,
    Voice.HAT: 0.14,
}


def _drum_samples(plan: MusicPlan) -> dict[Voice, FloatArray]:
    """One-shot kick, snare and hat, synthesised once per track from its seed.

    Kick and snare bodies are tuned to the tonic, as producers do, so they sit in the key.
    """
    rng = np.random.default_rng([plan.seed, 99])
    sr = SAMPLE_RATE
    tonic = plan.key_root_midi % 12

    t = np.arange(int(0.45 * sr)) / sr
    # Kick: a sine whose pitch drops fast (the "thump"), plus a tiny click for attack.
    tau = 0.035
    low = midi_to_hz(29 + (tonic - 29) % 12)  # 44..82 Hz
    phase = 2 * np.pi * (low * t + (150 - low) * tau * (1 - np.exp(-t / tau)))
    kick = np.sin(phase) * np.exp(-t / 0.16)
    kick[: int(0.003 * sr)] += rng.uniform(-0.3, 0.3, int(0.003 * sr))
    kick = np.tanh(1.6 * kick)

    t = np.arange(int(0.3 * sr)) / sr
    # Snare: high-passed noise (first difference) over a short body tone.
    noise = rng.uniform(-1, 1, len(t) + 1)
    body = np.sin(2 * np.pi * midi_to_hz(53 + (tonic - 53) % 12) * t)  # 175..330 Hz
    snare = 0.7 * np.diff(noise) * np.exp(-t / 0.06) + 0.5 * body * np.exp(-t / 0.04)

    t = np.arange(int(0.09 * sr)) / sr
    # Hat: noise differenced twice keeps only the top octaves, with a very short decay.
    noise = rng.uniform(-1, 1, len(t) + 2)
    hat = np.diff(noise, n=2) * np.exp(-t / 0.018)

    samples = {Voice.KICK: kick, Voice.SNARE: snare, Voice.HAT: hat}
    return {voice: s / np.max(np.abs(s)) for voice, s in samples.items()}


# --------------------------------------------------------------------------- renderer


class SynthRenderer:
    """Renders any span of a planned track; stateless between calls."""

    def __init__(self, plan: MusicPlan) -> None:
        self.plan = plan
        self.notes = compose(plan)
        self._drums = _drum_samples(plan)
        self._starts = np.array([round(n.start_s * SAMPLE_RATE) for n in self.notes], np.int64)
        self._ends = self._starts + np.array([self._length(n) for n in self.notes], np.int64)
        # The pad "filter": a dark (steep roll-off) and a bright (saw-like) cycle, blended.
        self._pad_dark = harmonic_table([1.0 / k**2.2 for k in range(1, 17)])
        self._pad_bright = harmonic_table([1.0 / k for k in range(1, 17)])
        self._tables: dict[tuple[Voice, float, int], Table] = {}
        self._gain = 1.0
        self._gain = self._probe_gain()

    @property
    def total_frames(self) -> int:
        return self.plan.total_frames

    def render(self, start: int, frames: int) -> npt.NDArray[np.float32]:
        """Frames [start, start + frames) of the final master as (frames, 2) float32."""
        mix = self._render_raw(start, frames) * self._gain
        mix = soft_limit(mix)
        mix *= self._fades(start, frames)[:, None]
        return mix.astype(np.float32)

    # -- mixing

    def _render_raw(self, start: int, frames: int) -> FloatArray:
        out = np.zeros((frames, CHANNELS), dtype=np.float64)
        end = start + frames
        for i in np.nonzero((self._starts < end) & (self._ends > start))[0]:
            note = self.notes[i]
            note_start = int(self._starts[i])
            lo = max(start, note_start)
            hi = min(end, int(self._ends[i]))
            left, right = self._voice(note, lo - note_start, hi - note_start, note_start)
            out[lo - start : hi - start, 0] += left
            out[lo - start : hi - start, 1] += right
        return out

    def _probe_gain(self) -> float:
        """Master gain from a render of the densest bars, so every track peaks alike."""
        plan = self.plan
        bars = [b for b in range(plan.n_bars) if section_of(plan, b) == "main"] or [0]
        first = bars[min(1, len(bars) - 1)]
        start = round(first * plan.bar_s * SAMPLE_RATE)
        frames = min(round(2 * plan.bar_s * SAMPLE_RATE), plan.total_frames)
        peak = float(np.max(np.abs(self._render_raw(start, frames))))
        return _PROBE_TARGET_PEAK / peak if peak > 0 else 1.0

    def _fades(self, start: int, frames: int) -> FloatArray:
        index = np.arange(start, start + frames, dtype=np.float64)
        total = self.plan.total_frames
        fade_in = _FADE_IN_S * SAMPLE_RATE
        fade_out = min(_FADE_OUT_MAX_S, 0.1 * self.plan.duration_s) * SAMPLE_RATE
        gain_in = np.clip(index / fade_in, 0.0, 1.0)
        gain_out = np.clip((total - index) / fade_out, 0.0, 1.0)
        return np.asarray(gain_in * gain_out**2, dtype=np.float64)

    # -- voices

    def _length(self, note: Note) -> int:
        if note.voice in self._drums:
            return len(self._drums[note.voice])
        release = {
            Voice.PAD: _PAD_RELEASE_S,
            Voice.BASS: _BASS_ENVELOPE.release,
            Voice.LEAD: _LEAD_ENVELOPES[self.plan.lead_timbre].release,
        }[note.voice]
        return round((note.gate_s + release) * SAMPLE_RATE)

    def _voice(
        self, note: Note, lo: int, hi: int, note_start: int
    ) -> tuple[FloatArray, FloatArray]:
        """Samples lo..hi (note-local) of one note, already panned to left and right."""
        gain = _VOICE_GAIN[note.voice] * note.velocity
        if note.voice in self._drums:
            mono = self._drums[note.voice][lo:hi] * gain
            return _pan(mono, note.pan)
        t = np.arange(lo, hi, dtype=np.float64) / SAMPLE_RATE
        if note.voice is Voice.PAD:
            return self._pad(note, t, note_start / SAMPLE_RATE, gain)
        if note.voice is Voice.BASS:
            env = adsr(t, note.gate_s, *_env_args(_BASS_ENVELOPE))
            freq = midi_to_hz(note.midi)
            # Fundamental plus a little 2nd/3rd harmonic so the bass reads on small speakers.
            table = self._table((Voice.BASS, 0.0, 0), lambda: [1.0, 0.35, 0.15])
            return _pan(wavetable_osc(table, freq * t) * env * gain, note.pan)
        return self._lead(note, t, gain)

    def _pad(
        self, note: Note, t: FloatArray, note_start_s: float, gain: float
    ) -> tuple[FloatArray, FloatArray]:
        plan = self.plan
        env = adsr(t, note.gate_s, plan.pad_attack_s, 1.0, 1.0, _PAD_RELEASE_S)
        # Slow sweep of the blend over 4 bars, on track time so all pad notes sweep together.
        track_t = note_start_s + t
        sweep = plan.brightness + 0.25 * np.sin(2 * np.pi * track_t / (4 * plan.bar_s))
        bright = np.clip(sweep, 0.0, 1.0)
        freq = midi_to_hz(note.midi)
        sides = []
        for cents in (-plan.pad_detune_cents, plan.pad_detune_cents):
            # Detuned copies left and right beat slowly against each other: width + motion.
            cycles = freq * 2 ** (cents / 1200) * t + (0.25 if cents > 0 else 0.0)
            dark = wavetable_osc(self._pad_dark, cycles)
            light = wavetable_osc(self._pad_bright, cycles)
            sides.append((dark + bright * (light - dark)) * env * gain)
        left, right = sides
        # Pan as a balance, so each chord tone keeps some of both detuned sides.
        return left * min(1.0, 1.0 - note.pan), right * min(1.0, 1.0 + note.pan)

    def _lead(self, note: Note, t: FloatArray, gain: float) -> tuple[FloatArray, FloatArray]:
        timbre = self.plan.lead_timbre
        env = adsr(t, note.gate_s, *_env_args(_LEAD_ENVELOPES[timbre]))
        freq = midi_to_hz(note.midi)
        if timbre is LeadTimbre.VOICE:
            # Vibrato that fades in after the attack, like a singer's. Phase is a smooth
            # function of note time, so it stays continuous across chunks.
            rate = 5.5
            depth = 0.012 * np.clip((t - 0.15) / 0.3, 0.0, 1.0)
            wobble = freq * depth * (1 - np.cos(2 * np.pi * rate * t)) / (2 * np.pi * rate)
            cycles = freq * t + wobble
            table = self._table(
                (Voice.LEAD, note.midi, note.variant),
                lambda: _formant_amplitudes(freq, note.variant),
            )
        else:
            cycles = freq * t
            table = self._table((Voice.LEAD, 0.0, 0), lambda: _LEAD_HARMONICS[timbre])
        return _pan(wavetable_osc(table, cycles) * env * gain, note.pan)

    def _table(
        self, key: tuple[Voice, float, int], amplitudes: Callable[[], npt.ArrayLike]
    ) -> Table:
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = harmonic_table(amplitudes())
        return table


def _env_args(env: _Envelope) -> tuple[float, float, float, float]:
    return env.attack, env.decay, env.sustain, env.release


def _pan(mono: FloatArray, pan: float) -> tuple[FloatArray, FloatArray]:
    """Constant-power pan."""
    angle = (pan + 1.0) * math.pi / 4
    return mono * math.cos(angle), mono * math.sin(angle)


def soft_limit(x: FloatArray) -> FloatArray:
    """Linear below the knee, then a tanh curve that approaches -1 dBFS and never clips."""
    span = _CEILING - _LIMIT_KNEE
    magnitude = np.abs(x)
    over = magnitude > _LIMIT_KNEE
    limited = np.where(
        over, _LIMIT_KNEE + span * np.tanh((magnitude - _LIMIT_KNEE) / span), magnitude
    )
    return np.asarray(np.sign(x) * limited, dtype=np.float64)
