"""Audio mastering: one loudness-normalised FLAC master and an MP3 rendition per track.

`master_audio` decodes whatever a provider returned (WAV, FLAC, MP3, OGG...), brings it
to 44.1 kHz (mono stays mono, more than two channels fold down to stereo), sets its
integrated loudness (ITU-R BS.1770 / EBU R128, measured with libebur128) to a target and
keeps its true peak under a ceiling, then writes `master.flac` (24-bit) and `stream.mp3`
(constant bitrate) into a work directory. `wav_chunks` streams a WAV made from a master
without a temporary file.

How the level is set. A plain gain reaches the loudness target but, on dynamic or
clipped material, pushes peaks over the ceiling; so the gained signal goes through a
look-ahead true-peak limiter, which takes some loudness away again. The makeup gain is
therefore found by iteration: a full pass renders the limited, quantised master into the
FLAC and measures it (loudness and true peak, as any meter will read the file); if its
loudness is off, cheaper search passes (limiter and loudness only) take secant steps on
loudness(gain) until within 0.1 LU, and a full pass at that gain follows. If a full
pass's true peak is over the ceiling, the limiter's threshold comes down by the
overshoot. Material the limiter leaves alone needs one pass; heavy limiting about five.

The limiter. The peak of each frame is estimated on the signal oversampled four times
(a windowed-sinc interpolator, 16 taps per phase), so peaks between samples count; the
gain a frame needs is threshold / peak (at most 1). The gain applied is the least
needed over a window from 10 ms back (hold) to 3 ms ahead (look-ahead), released
exponentially (100 ms), then averaged over the 3 ms before it with triangular weights:
it is never above what any frame needs, dips along an S-curve instead of a step, and
stays still through the cycles of a bass note.

Memory stays bounded: the source is read block by block and the 44.1 kHz working signal
(with its peak envelope) is kept in a scratch file in the work directory, which every
pass streams again; no pass holds more than a block or two.

Determinism: the same input gives byte-identical files. The sample path uses only
IEEE-exact numpy arithmetic (no BLAS, no vectorised transcendental functions whose
results may vary with the CPU's instruction set), the filter constants are computed with
Python's `math`, and no dither or timestamp goes into the output. The libraries picking
code paths by CPU (libsoxr when resampling, libFLAC, LAME) are deterministic for a given
build and CPU family.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyebur128
import soundfile as sf
import soxr

import engines.blas  # noqa: F401  single-threaded BLAS, before any numpy work
from engines.audio import AudioDecodeError

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
Int32Array = npt.NDArray[np.int32]

TARGET_SAMPLE_RATE = 44_100

MASTER_NAME = "master.flac"
MP3_NAME = "stream.mp3"
_SCRATCH_NAME = ".mastering-scratch.f32"
_PART_SUFFIX = ".part"

# 24-bit: the master is the source of every later rendition, so it keeps the limiter's
# output as computed (16-bit would need dither to stay clean at low levels, and dither
# is noise that has to be seeded to stay deterministic). Costs about 1.6x the bytes of a
# 16-bit FLAC.
_FLAC_SUBTYPE = "PCM_24"
_PCM_24_SCALE = float(1 << 23)
# libFLAC's level 5 (its default) out of 0..8: level 8 is twice as slow for <0.1% less.
_FLAC_COMPRESSION = 5 / 8

# MPEG-1 Layer III bitrates libsndfile can be asked for at constant bitrate. It sets
# bitrate = 320 - level * 288 kbps; level 1.0 (32 kbps) is refused. (What a user may
# choose is core.settings.OFFERED_MP3_BITRATES_KBPS, a subset.)
ENCODABLE_MP3_BITRATES_KBPS = (40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_HEADER_BITRATES = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)

_BLOCK_FRAMES = 1 << 14
_HEARTBEAT_INTERVAL_S = 0.5

# Loudness iteration.
_LOUDNESS_TOLERANCE_LU = 0.1
_MAX_SEARCH_PASSES = 8
_MAX_FULL_PASSES = 4
_MAX_GAIN_STEP_DB = 24.0
# The makeup gain stays within this much over the plain gain (target - loudness): past
# it the limiter would be squashing, not catching peaks; such a master comes out quieter
# than asked instead.
_MAX_LIMITING_DB = 12.0
# Loudness rising less than this per dB of gain: the limiter is saturated.
_MIN_SLOPE = 0.05
# The limiter starts this far under the ceiling; its peak estimate is close to, not
# the same as, the meter's.
_THRESHOLD_MARGIN_DB = 0.2
_THRESHOLD_STEP_EXTRA_DB = 0.05

# True-peak estimate: 4x oversampling, 16 taps per phase (8 frames each side).
_OVERSAMPLING = 4
_HALF_TAPS = 8
# Limiter timing, in frames at 44.1 kHz.
_LOOKAHEAD_FRAMES = 132  # 3 ms; even, so the two averaging boxes are equal
_BOX_FRAMES = _LOOKAHEAD_FRAMES // 2 + 1
_HOLD_FRAMES = 441  # 10 ms: longer than half a period of a 50 Hz bass note
_RELEASE_S = 0.1

_MODE_I_TP = pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_TRUE_PEAK


class MasteringError(RuntimeError):
    """The mastering could not meet its own guarantees (should not happen)."""


@dataclass(frozen=True)
class MasteredFile:
    """One file mastering wrote on local disk (stored, it becomes a contracts.Rendition)."""

    format: str  # "flac" | "mp3"
    path: Path
    content_type: str  # "audio/flac", "audio/mpeg"
    bitrate_kbps: int | None  # None for lossless
    size_bytes: int
    sample_rate: int
    channels: int
    duration_s: float


@dataclass(frozen=True)
class MasterReport:
    loudness_before_lufs: float | None  # None if silent (-inf) or shorter than 0.4 s
    true_peak_before_dbtp: float | None  # None if digital silence
    loudness_after_lufs: float | None
    true_peak_after_dbtp: float | None
    gain_db: float  # the makeup gain applied before limiting
    source_sample_rate: int
    sample_rate: int  # TARGET_SAMPLE_RATE
    channels: int
    duration_s: float
    renditions: tuple[MasteredFile, ...]  # flac first, then mp3


def master_audio(
    source: Path,
    workdir: Path,
    *,
    target_lufs: float = -14.0,
    ceiling_dbtp: float = -1.0,
    mp3_bitrate_kbps: int = 192,
    heartbeat: Callable[[], None] | None = None,
) -> MasterReport:
    """Master `source` into `workdir/master.flac` and `workdir/stream.mp3`.

    Synchronous and CPU-bound (run it in a thread); `heartbeat` is called about twice a
    second. Both files are written under a temporary name and renamed into place, so a
    file with the final name is always complete; the scratch file is removed on return.
    One call at a time per work directory. Raises `AudioDecodeError` for input that is
    not decodable audio.
    """
    if not -70.0 <= target_lufs <= 0.0:
        raise ValueError("target_lufs must be within -70..0 LUFS")
    if not -20.0 <= ceiling_dbtp <= 0.0:
        raise ValueError("ceiling_dbtp must be within -20..0 dBTP")
    if mp3_bitrate_kbps not in ENCODABLE_MP3_BITRATES_KBPS:
        raise ValueError(f"mp3_bitrate_kbps must be one of {ENCODABLE_MP3_BITRATES_KBPS}")
    if not source.is_file():
        raise FileNotFoundError(source)
    if source.stat().st_size == 0:
        raise AudioDecodeError(f"audio file {source.name} is empty")

    beat = _Heartbeat(heartbeat)
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / _SCRATCH_NAME
    master = workdir / MASTER_NAME
    mp3 = workdir / MP3_NAME
    try:
        work = _prepare(source, scratch, beat)
        passed = _normalise(work, scratch, master, target_lufs, ceiling_dbtp, beat)
        _encode_mp3(master, mp3, mp3_bitrate_kbps, beat)
    finally:
        for leftover in (scratch, _part(master), _part(mp3)):
            leftover.unlink(missing_ok=True)

    renditions = (
        _rendition("flac", master, "audio/flac", None),
        _rendition("mp3", mp3, "audio/mpeg", mp3_bitrate_kbps),
    )
    return MasterReport(
        loudness_before_lufs=work.loudness_before,
        true_peak_before_dbtp=work.true_peak_before,
        loudness_after_lufs=_round(passed.loudness),
        true_peak_after_dbtp=_round(passed.true_peak),
        gain_db=round(passed.gain_db, 2),
        source_sample_rate=work.source_rate,
        sample_rate=TARGET_SAMPLE_RATE,
        channels=work.channels,
        duration_s=work.frames / TARGET_SAMPLE_RATE,
        renditions=renditions,
    )


def _open_flac(source: Path | io.RawIOBase) -> sf.SoundFile:
    if isinstance(source, Path):
        return sf.SoundFile(str(source))
    source.seek(0)  # each reading starts from the top, wherever the last one stopped
    return sf.SoundFile(source)


def wav_size(source: Path | io.RawIOBase) -> int:
    """The exact number of bytes `wav_chunks(source)` yields (for Content-Length)."""
    with _open_flac(source) as info:
        header, data_bytes, _ = _wav_layout(
            info.frames, info.channels, info.samplerate, info.subtype
        )
    return len(header) + data_bytes + (data_bytes & 1)


def wav_chunks(source: Path | io.RawIOBase, block_frames: int = 65536) -> Iterator[bytes]:
    """A PCM WAV of the FLAC `source` (a path, or a seekable binary file such as
    core.storage_reader.StorageReader), yielded piece by piece: the header first (its
    sizes come from the FLAC's frame count), then the samples block by block, so memory
    holds one block whatever the track's length.

    Samples are copied exactly (16- or 24-bit, as in the FLAC). If the FLAC turns out to
    hold fewer frames than it declares, `AudioDecodeError` is raised mid-stream: the
    header promised a length that can no longer be honoured.
    """
    if block_frames <= 0:
        raise ValueError("block_frames must be > 0")
    name = source.name if isinstance(source, Path) else "the FLAC"
    with _open_flac(source) as f:
        header, data_bytes, sample_bytes = _wav_layout(
            f.frames, f.channels, f.samplerate, f.subtype
        )
        yield header
        remaining = f.frames
        while remaining > 0:
            if sample_bytes == 3:
                wide = f.read(min(block_frames, remaining), dtype="int32")
                # Little-endian int32 holding the sample in its top 24 bits: drop byte 0.
                piece = wide.astype("<i4", copy=False).view(np.uint8).reshape(-1, 4)[:, 1:]
                chunk = piece.tobytes()
            elif sample_bytes == 2:
                chunk = f.read(min(block_frames, remaining), dtype="int16").astype("<i2").tobytes()
            else:  # 8-bit WAV is unsigned
                narrow = f.read(min(block_frames, remaining), dtype="int16")
                chunk = ((narrow >> 8) + 128).astype(np.uint8).tobytes()
            got = len(chunk) // (sample_bytes * f.channels)
            if got == 0:
                raise AudioDecodeError(
                    f"{name} ended {remaining} frames short of its declared length"
                )
            remaining -= got
            yield chunk
        if data_bytes & 1:
            yield b"\x00"  # RIFF chunks are padded to an even size


# --- the passes -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Work:
    """The prepared working signal: where it is and what it measured."""

    frames: int
    channels: int
    source_rate: int
    loudness_before: float | None
    true_peak_before: float | None
    loudness: float | None  # of the 44.1 kHz working signal, before any gain
    peak: float  # the largest peak estimate in it (linear)


@dataclass(frozen=True)
class _Pass:
    gain_db: float
    threshold_db: float
    loudness: float | None  # as measured on the quantised output
    true_peak: float | None  # dBTP


def _prepare(source: Path, scratch: Path, beat: _Heartbeat) -> _Work:
    """Decode, fold down and resample the source into the scratch file, measuring it.

    The scratch file holds, per 44.1 kHz frame, the working samples and their peak
    estimate (float32, interleaved), ready for the limiter passes.
    """
    try:
        with sf.SoundFile(str(source)) as f:
            source_rate, source_channels = f.samplerate, f.channels
            if source_rate <= 0 or source_channels <= 0:
                raise AudioDecodeError(f"audio file {source.name} has no usable format")
            channels = min(source_channels, 2)
            before = _Meter(source_channels, source_rate, true_peak=True)
            converted = source_rate != TARGET_SAMPLE_RATE or source_channels != channels
            # Unconverted, the working signal is the source: its loudness is measured once.
            working = _Meter(channels, TARGET_SAMPLE_RATE, true_peak=False) if converted else None
            resampler = (
                None
                if source_rate == TARGET_SAMPLE_RATE
                else soxr.ResampleStream(
                    source_rate, TARGET_SAMPLE_RATE, channels, dtype="float32", quality="HQ"
                )
            )
            envelope = _PeakEnvelope(channels)
            frames, peak = 0, 0.0
            with scratch.open("wb") as out:

                def keep(samples: Float32Array, peaks: Float32Array) -> None:
                    nonlocal frames, peak
                    if len(samples):
                        np.column_stack((samples, peaks)).tofile(out)
                        frames += len(samples)
                        peak = max(peak, float(peaks.max()))

                def convert(block: Float32Array) -> None:
                    if len(block):
                        if working is not None:
                            working.add(block)
                        keep(*envelope.process(block))

                buffer = np.empty((_BLOCK_FRAMES, source_channels), dtype=np.float32)
                while True:
                    block = f.read(out=buffer)
                    if len(block) == 0:
                        break
                    if not np.isfinite(block).all():
                        raise AudioDecodeError(f"audio file {source.name} has non-finite samples")
                    before.add(block)
                    folded = _fold_down(block)
                    convert(folded if resampler is None else resampler.resample_chunk(folded))
                    beat()
                if resampler is not None:
                    tail = np.zeros((0, channels), dtype=np.float32)
                    convert(resampler.resample_chunk(tail, last=True))
                keep(*envelope.flush())
    except RuntimeError as exc:  # soundfile's LibsndfileError and friends
        raise AudioDecodeError(f"cannot decode audio file {source.name}: {exc}") from exc
    if frames == 0:
        raise AudioDecodeError(f"audio file {source.name} contains no audio frames")
    return _Work(
        frames=frames,
        channels=channels,
        source_rate=source_rate,
        loudness_before=_round(before.loudness()),
        true_peak_before=_round(before.true_peak()),
        loudness=(working or before).loudness(),
        peak=peak,
    )


def _normalise(
    work: _Work,
    scratch: Path,
    master: Path,
    target_lufs: float,
    ceiling_dbtp: float,
    beat: _Heartbeat,
) -> _Pass:
    """Write the master with its loudness on target and its true peak under the ceiling,
    and return its figures.

    A full pass writes the FLAC and measures its loudness and true peak. When the
    limiter took so much loudness away that it is off target, search passes (limiter and
    loudness meter only, about a third of the cost) find the makeup gain, and a full pass
    at that gain follows. If a full pass's true peak is over the ceiling, the limiter's
    threshold comes down by the overshoot and the gain is searched again.
    """
    threshold_db = ceiling_dbtp - _THRESHOLD_MARGIN_DB
    gain_db = 0.0 if work.loudness is None else target_lufs - work.loudness
    part = _part(master)
    searched = False
    for _ in range(_MAX_FULL_PASSES):
        rendered = _render(scratch, work, gain_db, threshold_db, beat, flac_path=part)
        peak_ok = rendered.true_peak is None or rendered.true_peak < ceiling_dbtp
        if peak_ok and (
            work.loudness is None or searched or _on_target(rendered.loudness, target_lufs)
        ):
            os.replace(part, master)
            return rendered
        known: tuple[float, float] | None = None
        if not peak_ok:
            assert rendered.true_peak is not None
            threshold_db -= rendered.true_peak - ceiling_dbtp + _THRESHOLD_STEP_EXTRA_DB
        elif rendered.loudness is not None:
            known = (gain_db, rendered.loudness)
        if work.loudness is not None:
            gain_db = _search_gain(scratch, work, threshold_db, target_lufs, beat, gain_db, known)
            searched = True
            if known is not None and gain_db == known[0]:
                os.replace(part, master)  # the search came back to the pass just written
                return rendered
    raise MasteringError(f"true peak stayed above {ceiling_dbtp} dBTP")


def _on_target(loudness: float | None, target_lufs: float) -> bool:
    return loudness is not None and abs(target_lufs - loudness) <= _LOUDNESS_TOLERANCE_LU


def _search_gain(
    scratch: Path,
    work: _Work,
    threshold_db: float,
    target_lufs: float,
    beat: _Heartbeat,
    gain_db: float,
    known: tuple[float, float] | None,
) -> float:
    """The makeup gain that brings the limited signal's loudness to the target (within
    the tolerance), by secant steps from `gain_db` (whose loudness may be `known`); or,
    when the limiter cannot make it that loud, the least gain that gets closest."""
    assert work.loudness is not None
    plain_db = target_lufs - work.loudness
    points = [known] if known is not None else []  # (gain, loudness) measured
    if not points and work.peak * 10.0 ** (gain_db / 20.0) <= 10.0 ** (threshold_db / 20.0):
        return gain_db  # nothing to limit: loudness follows the gain exactly
    for _ in range(_MAX_SEARCH_PASSES):
        if points:
            last_gain, last_loudness = points[-1]
            error = target_lufs - last_loudness
            if abs(error) <= _LOUDNESS_TOLERANCE_LU:
                return last_gain
            slope = 1.0  # a plain gain moves loudness dB for dB; limiting makes it less
            if len(points) >= 2:
                (g0, l0), (g1, l1) = points[-2], points[-1]
                slope = (l1 - l0) / (g1 - g0) if g1 != g0 else 0.0
                if slope < _MIN_SLOPE and error > 0:
                    break  # saturated: more gain only squashes harder
                slope = min(1.0, max(_MIN_SLOPE, slope))
            step = max(-_MAX_GAIN_STEP_DB, min(_MAX_GAIN_STEP_DB, error / slope))
            gain_db = max(plain_db - 1.0, min(plain_db + _MAX_LIMITING_DB, last_gain + step))
            if gain_db == last_gain:
                break
        loudness = _render(scratch, work, gain_db, threshold_db, beat).loudness
        if loudness is None:  # cannot happen for audio that had a loudness
            break
        points.append((gain_db, loudness))
    if not points:
        return gain_db
    # Closest to the target; among near-equals (a saturated limiter), the least gain.
    closest = min(abs(target_lufs - loudness) for _, loudness in points)
    return min(g for g, loudness in points if abs(target_lufs - loudness) <= closest + 0.05)


def _render(
    scratch: Path,
    work: _Work,
    gain_db: float,
    threshold_db: float,
    beat: _Heartbeat,
    *,
    flac_path: Path | None = None,
) -> _Pass:
    """One pass: gain, limit and quantise the working signal, measuring exactly the
    samples a master would hold. With `flac_path`, also write them there (24-bit FLAC)
    and measure the true peak; without, measure the loudness only."""
    channels = work.channels
    limiter = _Limiter(channels, 10.0 ** (gain_db / 20.0), 10.0 ** (threshold_db / 20.0))
    meter = _Meter(channels, TARGET_SAMPLE_RATE, true_peak=flac_path is not None)
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(scratch.open("rb"))
        out = None
        if flac_path is not None:
            out = stack.enter_context(
                sf.SoundFile(
                    str(flac_path),
                    "w",
                    TARGET_SAMPLE_RATE,
                    channels,
                    _FLAC_SUBTYPE,
                    format="FLAC",
                    compression_level=_FLAC_COMPRESSION,
                )
            )

        def emit(limited: Float64Array) -> None:
            if len(limited) == 0:
                return
            pcm = _quantise_24(limited)
            if out is not None:
                out.write(pcm)
            meter.add(pcm)

        while True:
            data = np.fromfile(source, dtype=np.float32, count=_BLOCK_FRAMES * (channels + 1))
            if data.size == 0:
                break
            rows = data.reshape(-1, channels + 1)
            emit(limiter.process(rows[:, :channels], rows[:, channels]))
            beat()
        emit(limiter.flush())
    return _Pass(
        gain_db=gain_db,
        threshold_db=threshold_db,
        loudness=meter.loudness(),
        true_peak=meter.true_peak() if flac_path is not None else None,
    )


def _encode_mp3(master: Path, mp3: Path, bitrate_kbps: int, beat: _Heartbeat) -> None:
    """Encode the master to a constant-bitrate MP3 (libsndfile's LAME).

    libsndfile writes a LAME "Info" tag with the encoder delay and padding, and its
    mpg123 decoder honours it: the MP3 decodes to exactly the master's frames, aligned.
    """
    part = _part(mp3)
    with (
        sf.SoundFile(str(master)) as f,
        sf.SoundFile(
            str(part),
            "w",
            f.samplerate,
            f.channels,
            "MPEG_LAYER_III",
            format="MP3",
            bitrate_mode="CONSTANT",
            compression_level=(320 - bitrate_kbps) / 288,
        ) as out,
    ):
        for block in f.blocks(_BLOCK_FRAMES, dtype="float32", always_2d=True):
            out.write(block)
            beat()
    written = _mp3_bitrate_kbps(part)
    if written != bitrate_kbps:
        raise MasteringError(f"asked libsndfile for {bitrate_kbps} kbps MP3, got {written}")
    os.replace(part, mp3)


# --- signal processing ----------------------------------------------------------------


class _PeakEnvelope:
    """Per frame, the largest magnitude of the signal oversampled 4x between the frame's
    two neighbours, over all channels: an estimate of its true peak there.

    Fed block by block; it returns the frames it has finished (each with its estimate),
    eight frames behind the input, since interpolation needs eight frames ahead.
    """

    def __init__(self, channels: int) -> None:
        # Frames before the start are silence.
        self._buffer = np.zeros((_HALF_TAPS, channels), dtype=np.float32)

    def process(self, block: Float32Array) -> tuple[Float32Array, Float32Array]:
        buffer = np.concatenate((self._buffer, block))
        # Output frame k (buffer index k + 8) needs buffer[k .. k + 16].
        ready = len(buffer) - 2 * _HALF_TAPS
        if ready <= 0:
            self._buffer = buffer
            return buffer[:0], np.zeros(0, dtype=np.float32)
        # between[i]: peak over buffer[i] and the 3 points after it (i = 7 .. len - 9).
        first, stop = _HALF_TAPS - 1, len(buffer) - _HALF_TAPS
        between = np.abs(buffer[first:stop])
        for phase_taps in _INTERPOLATORS:
            value = np.zeros((stop - first, buffer.shape[1]), dtype=np.float32)
            for offset, tap in zip(range(-_HALF_TAPS + 1, _HALF_TAPS + 1), phase_taps, strict=True):
                value += tap * buffer[first + offset : stop + offset]
            np.maximum(between, np.abs(value), out=between)
        per_frame = between.max(axis=1)
        # A frame carries the peaks on both sides of it.
        peaks = np.maximum(per_frame[:-1], per_frame[1:])
        samples = buffer[_HALF_TAPS : _HALF_TAPS + ready]
        self._buffer = buffer[ready:]
        return samples, peaks

    def flush(self) -> tuple[Float32Array, Float32Array]:
        channels = self._buffer.shape[1]
        return self.process(np.zeros((_HALF_TAPS, channels), dtype=np.float32))


def _interpolators() -> tuple[Float32Array, ...]:
    """Blackman-windowed sinc taps for the points 1/4, 2/4 and 3/4 of the way from one
    frame to the next, each phase normalised to unit gain at DC.

    Computed with `math` rather than numpy so the constants are the same on every CPU.
    """
    phases = []
    for phase in range(1, _OVERSAMPLING):
        frac = phase / _OVERSAMPLING
        taps = []
        for offset in range(-_HALF_TAPS + 1, _HALF_TAPS + 1):
            t = offset - frac
            sinc = math.sin(math.pi * t) / (math.pi * t)
            x = math.pi * t / _HALF_TAPS
            window = 0.42 + 0.5 * math.cos(x) + 0.08 * math.cos(2 * x)
            taps.append(sinc * window)
        total = sum(taps)
        phases.append(np.array([tap / total for tap in taps], dtype=np.float32))
    return tuple(phases)


_INTERPOLATORS = _interpolators()


class _Limiter:
    """Look-ahead true-peak limiter with linked channels.

    Per frame, the gain needed is threshold / peak estimate (at most 1). The gain
    applied to frame n is a triangular average over frames n - L .. n of the *held*
    requirement, the least needed over [j - H, j + L] for each j (look-ahead L, hold H);
    every one of those windows contains n, so the gain never exceeds what n needs. The
    hold keeps the gain still over the cycles of a bass note (no ripple at 50 Hz and
    up); after it, the gain recovers exponentially (the reduction decays with a time
    constant of `_RELEASE_S`), as an analogue limiter's would.

    `process` takes frames with their peak estimates and returns limited frames, L
    behind; `flush` returns the rest.
    """

    def __init__(self, channels: int, gain: float, threshold: float) -> None:
        self._channels = channels
        self._gain = gain
        self._threshold = threshold / gain  # compared with the un-gained peaks
        # L frames of silence lead in, so that the first frames get the same look-ahead
        # as any other (they are dropped from the output), after H frames of history.
        self._samples = np.zeros((_LOOKAHEAD_FRAMES, channels), dtype=np.float32)
        self._needed = np.ones(_HOLD_FRAMES + _LOOKAHEAD_FRAMES, dtype=np.float64)
        self._lead_in = _LOOKAHEAD_FRAMES
        self._reduction = 0.0  # 1 - gain of the last frame released
        self._history_a = np.ones(_BOX_FRAMES - 1, dtype=np.float64)
        self._history_b = np.ones(_BOX_FRAMES - 1, dtype=np.float64)

    def process(self, samples: Float32Array, peaks: Float32Array) -> Float64Array:
        floor = np.maximum(peaks.astype(np.float64), self._threshold)
        needed = np.concatenate((self._needed, self._threshold / floor))
        pending = np.concatenate((self._samples, samples))
        ready = len(pending) - _LOOKAHEAD_FRAMES
        if ready <= 0:
            self._needed, self._samples = needed, pending
            return np.zeros((0, self._channels), dtype=np.float64)
        held = _running_min(needed, _HOLD_FRAMES + _LOOKAHEAD_FRAMES + 1)
        released = self._release(held)
        # Two equal boxes in a row: a triangular average over L + 1 frames.
        once, self._history_a = _moving_average(self._history_a, released)
        twice, self._history_b = _moving_average(self._history_b, once)
        out = pending[:ready] * (np.minimum(twice, 1.0) * self._gain)[:, None]
        self._needed, self._samples = needed[ready:], pending[ready:]
        if self._lead_in:
            dropped = min(self._lead_in, len(out))
            self._lead_in -= dropped
            out = out[dropped:]
        return out

    def flush(self) -> Float64Array:
        return self.process(
            np.zeros((_LOOKAHEAD_FRAMES, self._channels), dtype=np.float32),
            np.zeros(_LOOKAHEAD_FRAMES, dtype=np.float32),
        )

    def _release(self, needed: Float64Array) -> Float64Array:
        """The gain after release: the reduction (1 - gain) jumps up to what a frame
        needs at once and decays by `_RELEASE_DECAY` a frame, i.e.
        reduction[i] = max(1 - needed[i], reduction[i-1] * decay), computed without a
        Python loop as decay^i * running max of (1 - needed[k]) / decay^k."""
        n = len(needed)
        growth, decay = _release_powers(n)
        reduction = np.maximum.accumulate((1.0 - needed) * growth[:n]) * decay[:n]
        np.maximum(reduction, self._reduction * decay[1 : n + 1], out=reduction)
        self._reduction = float(reduction[-1])
        return 1.0 - reduction


def _release_powers(n: int) -> tuple[Float64Array, Float64Array]:
    """(decay^-i, decay^i) for i = 0 .. n, by repeated products (exact IEEE steps, the
    same on every CPU), cached for the common block length."""
    if n + 1 <= len(_RELEASE_POWERS[0]):
        return _RELEASE_POWERS
    return _powers(1.0 / _RELEASE_DECAY, n + 1), _powers(_RELEASE_DECAY, n + 1)


def _powers(base: float, count: int) -> Float64Array:
    out = np.full(count, base)
    out[0] = 1.0
    np.cumprod(out, out=out)
    return out


_RELEASE_DECAY = math.exp(-1.0 / (_RELEASE_S * TARGET_SAMPLE_RATE))
_RELEASE_POWERS = (
    _powers(1.0 / _RELEASE_DECAY, _BLOCK_FRAMES + 1),
    _powers(_RELEASE_DECAY, _BLOCK_FRAMES + 1),
)


def _running_min(values: Float64Array, width: int) -> Float64Array:
    """out[i] = min(values[i : i + width]), for every i with a full window.

    By doubling spans: about log2(width) vectorised minimums instead of `width`."""
    out, span = values, 1
    while span * 2 <= width:
        out = np.minimum(out[:-span], out[span:])
        span *= 2
    rest = width - span  # out[i] covers values[i : i + span]; rest <= span
    if rest:
        out = np.minimum(out[:-rest], out[rest:])
    return out


def _moving_average(
    history: Float64Array, values: Float64Array
) -> tuple[Float64Array, Float64Array]:
    """The mean of each value and the `len(history)` before it, and the new history."""
    width = len(history) + 1
    joined = np.concatenate((history, values))
    sums = np.cumsum(np.concatenate(([0.0], joined)))
    return (sums[width:] - sums[:-width]) / width, joined[len(joined) - len(history) :]


def _quantise_24(samples: Float64Array) -> Int32Array:
    """24-bit PCM, rounded to nearest, in the top bits of int32 (as libsndfile takes it)."""
    scaled = np.rint(samples * _PCM_24_SCALE)
    np.clip(scaled, -_PCM_24_SCALE, _PCM_24_SCALE - 1, out=scaled)
    pcm: Int32Array = scaled.astype(np.int32) << 8
    return pcm


def _fold_down(block: Float32Array) -> Float32Array:
    """Mono and stereo as they are; more channels folded to stereo.

    Six channels are taken as 5.1 (L R C LFE Ls Rs: centre and surrounds at -3 dB into
    both sides, LFE dropped); other layouts send even channels left and odd ones right.
    """
    channels = block.shape[1]
    if channels <= 2:
        return np.ascontiguousarray(block)
    left_parts: tuple[tuple[int, float], ...]
    right_parts: tuple[tuple[int, float], ...]
    if channels == 6:
        left_parts = ((0, 1.0), (2, _MINUS_3DB), (4, _MINUS_3DB))
        right_parts = ((1, 1.0), (2, _MINUS_3DB), (5, _MINUS_3DB))
    else:
        left_parts = tuple((c, 1.0) for c in range(0, channels, 2))
        right_parts = tuple((c, 1.0) for c in range(1, channels, 2))
    out = np.zeros((len(block), 2), dtype=np.float32)
    for side, parts in enumerate((left_parts, right_parts)):
        scale = np.float32(1.0 / sum(weight for _, weight in parts))
        for channel, weight in parts:
            out[:, side] += np.float32(weight) * block[:, channel]
        out[:, side] *= scale
    return out


_MINUS_3DB = math.sqrt(0.5)


class _Meter:
    """libebur128 integrated loudness, and true peak if asked, fed block by block."""

    def __init__(self, channels: int, sample_rate: int, *, true_peak: bool) -> None:
        self._channels = channels
        mode = _MODE_I_TP if true_peak else pyebur128.MeasurementMode.MODE_I
        self._state = pyebur128.R128State(channels, sample_rate, mode)

    def add(self, block: npt.NDArray[np.float32] | npt.NDArray[np.int32]) -> None:
        self._state.add_frames(np.ascontiguousarray(block).ravel(), len(block))

    def loudness(self) -> float | None:
        """LUFS, or None for silence and audio too short to gate (under 0.4 s)."""
        lufs = float(pyebur128.get_loudness_global(self._state))
        return lufs if math.isfinite(lufs) else None

    def true_peak(self) -> float | None:
        """dBTP over all channels, or None for digital silence."""
        peak = max(pyebur128.get_true_peak(self._state, c) for c in range(self._channels))
        return 20.0 * math.log10(peak) if peak > 0.0 else None


class _Heartbeat:
    """Calls the caller's heartbeat at most every `_HEARTBEAT_INTERVAL_S`."""

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback
        self._last = time.monotonic()
        if callback is not None:
            callback()

    def __call__(self) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if now - self._last >= _HEARTBEAT_INTERVAL_S:
            self._last = now
            self._callback()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _part(path: Path) -> Path:
    return path.with_name(path.name + _PART_SUFFIX)


def _rendition(kind: str, path: Path, content_type: str, bitrate_kbps: int | None) -> MasteredFile:
    info = sf.info(str(path))
    return MasteredFile(
        format=kind,
        path=path,
        content_type=content_type,
        bitrate_kbps=bitrate_kbps,
        size_bytes=path.stat().st_size,
        sample_rate=info.samplerate,
        channels=info.channels,
        duration_s=info.frames / info.samplerate,
    )


def _mp3_bitrate_kbps(path: Path) -> int | None:
    """The bitrate in the first MPEG audio frame header (after any ID3v2 tag)."""
    with path.open("rb") as f:
        head = f.read(10)
        offset = 0
        if head[:3] == b"ID3" and len(head) == 10:
            size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
            offset = 10 + size
        f.seek(offset)
        frame = f.read(4)
    if len(frame) < 4 or frame[0] != 0xFF or (frame[1] & 0xE0) != 0xE0:
        return None
    return _MP3_HEADER_BITRATES[frame[2] >> 4] if frame[2] >> 4 < 15 else None


_WAV_SUBTYPE_BYTES = {"PCM_S8": 1, "PCM_16": 2, "PCM_24": 3}


def _wav_layout(
    frames: int, channels: int, sample_rate: int, subtype: str
) -> tuple[bytes, int, int]:
    """The 44-byte header of a PCM WAV holding this audio, its data size and the bytes
    per sample."""
    sample_bytes = _WAV_SUBTYPE_BYTES.get(subtype)
    if sample_bytes is None:
        raise ValueError(f"cannot stream {subtype} audio as PCM WAV")
    block_align = channels * sample_bytes
    data_bytes = frames * block_align
    riff_bytes = 4 + (8 + 16) + (8 + data_bytes + (data_bytes & 1))
    if riff_bytes > 0xFFFFFFFF:
        raise ValueError("audio too long for a WAV file")
    header = b"".join(
        (
            b"RIFF",
            struct.pack("<I", riff_bytes),
            b"WAVE",
            b"fmt ",
            struct.pack(
                "<IHHIIHH",
                16,
                1,  # WAVE_FORMAT_PCM
                channels,
                sample_rate,
                sample_rate * block_align,
                block_align,
                8 * sample_bytes,
            ),
            b"data",
            struct.pack("<I", data_bytes),
        )
    )
    return header, data_bytes, sample_bytes
