"""Pure audio analysis: levels, loudness, tempo and a waveform for the UI.

Nothing here touches storage or the network; `analyze` reads one local file and returns
an `AudioInfo`. `quality_problem` turns that into a human reason to reject a render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyebur128
import soundfile as sf

import engines.blas  # noqa: F401  single-threaded BLAS, before any numpy work

if TYPE_CHECKING:
    # Imported where it is built: the mastering process needs this module, not pydantic
    # and Temporal's SDK (~25 MB and 0.14 s of imports).
    from core.contracts import AudioInfo

FloatArray = npt.NDArray[np.float32]

# Levels are floored here instead of -inf: AudioInfo crosses Temporal as JSON, where
# pydantic writes infinities as null and then refuses to read them back.
DB_FLOOR = -120.0

_READ_BLOCK_FRAMES = 1 << 16
# BS.1770 gates loudness over 400 ms blocks; shorter audio has no integrated loudness.
_LOUDNESS_BLOCK_S = 0.4

# Tempo: onsets are measured on audio decimated to about 11 kHz (beats live well below),
# at about 172 frames per second, with 46 ms windows (8 hops) so close partials are
# mostly resolved instead of beating against each other.
_TEMPO_ANALYSIS_RATE = 11025
_ONSET_FPS = 172.0
_FFT_PER_HOP = 8
# Per-bin rises smaller than this (log units, ~1 dB) are ripple, not onsets.
_MIN_RISE = np.float32(0.12)
_MIN_TEMPO_AUDIO_S = 3.0
_MIN_BPM = 60.0
_MAX_BPM = 200.0
# Octave errors (half/double tempo) are resolved with a broad preference around this BPM.
_PRIOR_CENTER_BPM = 110.0
_PRIOR_OCTAVES = 1.0
# Normalised autocorrelation over the beat comb below this means "no periodic onsets".
_MIN_BEAT_CLARITY = 0.12
# Folded over one beat in this many slots, the strongest slot must carry this many times
# the average onset strength (music with a beat: about 3-5; steady tones: 1.1-1.4).
_SALIENCE_SLOTS = 16
_MIN_BEAT_SALIENCE = 1.8
_SALIENCE_WINDOW_S = 8.0
_SMOOTHING = np.hanning(7)[1:-1] / np.hanning(7)[1:-1].sum()


class AudioDecodeError(ValueError):
    """The file is not audio that libsndfile can decode."""


def analyze(path: Path, n_peaks: int = 400, *, tempo: bool = True) -> AudioInfo:
    """Measure a decoded audio file: duration, levels, loudness, tempo and waveform peaks.

    `tempo=False` leaves `bpm` unset: the tempo is the costliest measure, and the quality
    check does not need it (the track's tempo is measured later, off the critical path).

    The file is read once, block by block, and every measure is taken as the blocks go
    by; only the decimated mono signal the tempo needs is kept (about 1/8 of a stereo
    44.1 kHz file's float32 samples), so memory stays bounded for long tracks.
    """
    if n_peaks < 0:
        raise ValueError("n_peaks must be >= 0")
    if not path.is_file():
        raise FileNotFoundError(path)
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"audio file {path.name} is empty")
    try:
        with sf.SoundFile(path) as f:
            measured = _measure(f, path.name, n_peaks, f.frames, tempo)
            if measured.frames != f.frames:
                # The header promised another length: lay the waveform out over the truth.
                f.seek(0)
                measured = _measure(f, path.name, n_peaks, measured.frames, tempo)
    except RuntimeError as exc:  # soundfile's LibsndfileError and friends
        raise AudioDecodeError(f"cannot decode audio file {path.name}: {exc}") from exc
    if measured.frames == 0 or measured.sample_rate <= 0:
        raise AudioDecodeError(f"audio file {path.name} contains no audio frames")
    from core.contracts import AudioInfo

    return AudioInfo(
        duration_s=measured.frames / measured.sample_rate,
        sample_rate=measured.sample_rate,
        channels=measured.channels,
        peak_dbfs=amplitude_to_dbfs(measured.peak),
        rms_dbfs=amplitude_to_dbfs(
            math.sqrt(measured.sum_squares / (measured.frames * measured.channels))
        ),
        loudness_lufs=measured.loudness_lufs,
        bpm=measured.bpm,
        peaks=measured.peaks,
    )


def estimate_tempo(path: Path) -> float | None:
    """The tempo (BPM) of a decoded audio file, or None when it has no clear beat."""
    try:
        with sf.SoundFile(path) as f:
            sample_rate = f.samplerate
            factor = _tempo_factor(sample_rate)
            signal = _Decimator(factor)
            frames = 0
            for block in f.blocks(_READ_BLOCK_FRAMES, dtype="float32", always_2d=True):
                signal.add(_downmix(block))
                frames += len(block)
    except RuntimeError as exc:
        raise AudioDecodeError(f"cannot decode audio file {path.name}: {exc}") from exc
    if frames < _MIN_TEMPO_AUDIO_S * sample_rate:
        return None
    return _tempo_of_decimated(signal.result(), sample_rate / factor)


def quality_problem(
    info: AudioInfo,
    expected_duration_s: float,
    tolerance: float = 0.10,
    silence_dbfs: float = -60.0,
) -> str | None:
    """Why this audio is not an acceptable render of the requested length, or None."""
    if abs(info.duration_s - expected_duration_s) > tolerance * expected_duration_s:
        return (
            f"duration {info.duration_s:.1f} s is not within {tolerance:.0%} "
            f"of {expected_duration_s:g} s"
        )
    if not info.rms_dbfs > silence_dbfs:  # also catches NaN
        shown = "-inf" if info.rms_dbfs <= DB_FLOOR else f"{info.rms_dbfs:.1f}"
        return f"audio is silent (rms {shown} dBFS)"
    return None


def amplitude_to_dbfs(amplitude: float) -> float:
    """Linear amplitude (1.0 = full scale) to dBFS, floored at DB_FLOOR."""
    if amplitude <= 0.0 or not math.isfinite(amplitude):
        return DB_FLOOR
    return round(max(DB_FLOOR, 20.0 * math.log10(amplitude)), 2)


@dataclass
class _Measured:
    frames: int
    sample_rate: int
    channels: int
    peak: float
    sum_squares: float
    loudness_lufs: float | None
    bpm: float | None
    peaks: list[float]


def _measure(
    f: sf.SoundFile, name: str, n_peaks: int, expected_frames: int, tempo: bool = True
) -> _Measured:
    """One pass over the file: levels, loudness, waveform and the tempo's decimated mono."""
    sample_rate, channels = f.samplerate, f.channels
    loudness = _LoudnessMeter(channels, sample_rate, expected_frames)
    waveform = _Waveform(expected_frames, n_peaks)
    factor = _tempo_factor(sample_rate)
    tempo_signal = _Decimator(factor)
    peak = sum_squares = 0.0
    frames = 0
    buffer = np.empty((_READ_BLOCK_FRAMES, channels), dtype=np.float32)
    while True:
        block = f.read(out=buffer)
        if len(block) == 0:
            break
        high, low = float(block.max()), float(block.min())
        if not (math.isfinite(high) and math.isfinite(low)):
            raise AudioDecodeError(f"audio file {name} has non-finite samples")
        peak = max(peak, high, -low)
        wide = block.reshape(-1).astype(np.float64)  # float32 sums drift
        sum_squares += float(np.dot(wide, wide))
        loudness.add(block)
        waveform.add(block, frames)
        if tempo:
            tempo_signal.add(_downmix(block))
        frames += len(block)
    bpm = None
    if tempo and frames >= _MIN_TEMPO_AUDIO_S * sample_rate:
        bpm = _tempo_of_decimated(tempo_signal.result(), sample_rate / factor)
    return _Measured(
        frames=frames,
        sample_rate=sample_rate,
        channels=channels,
        peak=peak,
        sum_squares=sum_squares,
        loudness_lufs=loudness.result(),
        bpm=bpm,
        peaks=waveform.result(),
    )


def _downmix(data: FloatArray) -> FloatArray:
    mono = data[:, 0].copy()
    for channel in range(1, data.shape[1]):  # column adds beat numpy's small-axis mean
        mono += data[:, channel]
    mono *= 1.0 / data.shape[1]
    return mono


class _Waveform:
    """Max absolute sample (over all channels) in each of n_peaks equal windows, in 0..1,
    kept up to date block by block."""

    def __init__(self, frames: int, n_peaks: int) -> None:
        self.n_peaks = n_peaks if frames > 0 else 0
        starts = np.linspace(0, frames, self.n_peaks, endpoint=False).astype(np.int64)
        self.starts = np.minimum(starts, max(frames - 1, 0))
        self.peaks = np.zeros(self.n_peaks, dtype=np.float32)

    def add(self, block: FloatArray, offset: int) -> None:
        if self.n_peaks == 0:
            return
        # The windows the block overlaps, and where each begins inside the block.
        first = int(np.searchsorted(self.starts, offset, "right")) - 1
        last = int(np.searchsorted(self.starts, offset + len(block) - 1, "right")) - 1
        cuts = np.concatenate(([0], self.starts[first + 1 : last + 1] - offset))
        # Reduce along frames first: numpy's max over a 2-wide axis is slow.
        highs = np.maximum.reduceat(block, cuts, axis=0).max(axis=1)
        lows = np.minimum.reduceat(block, cuts, axis=0).min(axis=1)
        windows = slice(first, last + 1)
        self.peaks[windows] = np.maximum(self.peaks[windows], np.maximum(highs, -lows))

    def result(self) -> list[float]:
        return [round(float(p), 4) for p in np.clip(self.peaks, 0.0, 1.0)]


class _LoudnessMeter:
    """ITU-R BS.1770 integrated loudness in LUFS (None if too short, silent or exotic),
    fed block by block."""

    def __init__(self, channels: int, sample_rate: int, frames: int) -> None:
        # One full gating block at least; past five channels the sixth would be taken for
        # an LFE (not weighted) on files that carry no such layout.
        self.state = None
        if frames > _LOUDNESS_BLOCK_S * sample_rate and channels <= 5:
            # libebur128, the reference EBU R128 meter: C speed and no SciPy (whose
            # signal package alone added ~75 MB to every worker).
            self.state = pyebur128.R128State(
                channels, sample_rate, pyebur128.MeasurementMode.MODE_I
            )

    def add(self, block: FloatArray) -> None:
        if self.state is not None:
            self.state.add_frames(np.ascontiguousarray(block).ravel(), len(block))

    def result(self) -> float | None:
        if self.state is None:
            return None
        try:
            lufs = float(pyebur128.get_loudness_global(self.state))
        except (ValueError, RuntimeError):
            return None
        if not math.isfinite(lufs) or lufs < DB_FLOOR:
            return None
        return round(lufs, 2)


class _Decimator:
    """`decimate` over a signal that arrives in pieces: the same samples out as one call
    on the whole signal, holding only the taps' worth of input between pieces."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.carry = np.zeros(0, dtype=np.float32)
        self.pieces: list[FloatArray] = []

    def add(self, piece: FloatArray) -> None:
        if self.factor == 1:
            self.pieces.append(piece)
            return
        signal = np.concatenate((self.carry, piece))
        taps = _decimation_taps(self.factor)
        n_out = (len(signal) - taps) // self.factor + 1 if len(signal) >= taps else 0
        if n_out > 0:
            self.pieces.append(decimate(signal[: (n_out - 1) * self.factor + taps], self.factor))
        self.carry = signal[n_out * self.factor :]

    def result(self) -> FloatArray:
        if not self.pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.pieces)


def _tempo_factor(sample_rate: int) -> int:
    """How much the tempo's mono signal is decimated: to about `_TEMPO_ANALYSIS_RATE`."""
    return max(1, round(sample_rate / _TEMPO_ANALYSIS_RATE))


def _decimation_taps(factor: int) -> int:
    return 8 * factor + 1


def _tempo_of_decimated(signal: FloatArray, rate: float) -> float | None:
    """Estimated beats per minute in 60..200 of mono audio decimated to `rate`, or None
    when there is no clear beat.

    Spectral-flux onset envelope, then its autocorrelation scored over a comb of beat
    multiples (so a real beat period beats a lucky single lag), weighted by a broad
    preference for common tempos to settle half/double-tempo ambiguity. A periodicity
    only counts as a beat if onsets bunch up at one phase of it (see `_beat_salience`).
    """
    onsets, fps = onset_envelope(signal, rate)
    if len(onsets) < 2:
        return None
    envelope = np.maximum(onsets - _moving_average(onsets, int(fps)), 0.0)
    # A little smoothing widens autocorrelation peaks so slightly-off lags still score.
    envelope = np.convolve(envelope, _SMOOTHING, mode="same").astype(np.float32)
    acf = _autocorrelation(envelope)
    if acf is None:
        return None

    min_lag = math.floor(60.0 * fps / _MAX_BPM)
    max_lag = min(math.ceil(60.0 * fps / _MIN_BPM), len(acf) // 2 - 1)
    if max_lag <= min_lag + 2:
        return None
    # Quarter-frame steps: beat peaks are narrow, and the comb multiplies any lag error.
    lags = np.arange(min_lag, max_lag + 0.001, 0.25)
    comb = _comb_score(acf, lags)
    bpms = 60.0 * fps / lags
    prior = np.exp(-0.5 * (np.log2(bpms / _PRIOR_CENTER_BPM) / _PRIOR_OCTAVES) ** 2)
    best = int(np.argmax(comb * prior))
    if comb[best] < _MIN_BEAT_CLARITY:
        return None

    # Refine to a fractional lag: the comb over several multiples pins the period down.
    fine = np.arange(lags[best] - 0.5, lags[best] + 0.5001, 0.02)
    lag = float(fine[int(np.argmax(_comb_score(acf, fine)))])
    bpm = 60.0 * fps / lag
    if not _MIN_BPM * 0.97 <= bpm <= _MAX_BPM * 1.03:
        return None
    if _beat_salience(onsets, fps, lag) < _MIN_BEAT_SALIENCE:
        return None
    return round(bpm, 1)


def _beat_salience(onsets: FloatArray, fps: float, period: float) -> float:
    """How much onset strength bunches at one phase of the beat (1.0 = not at all).

    Steady tones ripple periodically in any spectrogram, but the ripple is spread evenly
    over the period; drums and note attacks pile up in one narrow slot. The envelope is
    folded over short windows so slow tempo drift does not smear the picture.
    """
    window = max(int(_SALIENCE_WINDOW_S * fps), int(4 * period))
    ratios = []
    for start in range(0, max(1, len(onsets) - window // 2), window):
        segment = onsets[start : start + window]
        slots = ((np.arange(len(segment)) / period) % 1.0 * _SALIENCE_SLOTS).astype(np.int64)
        counts = np.bincount(slots, minlength=_SALIENCE_SLOTS)
        sums = np.bincount(slots, weights=segment, minlength=_SALIENCE_SLOTS)
        profile = sums[counts > 0] / counts[counts > 0]
        if profile.mean() > 0:
            ratios.append(float(profile.max() / profile.mean()))
    return float(np.median(ratios)) if ratios else 0.0


def onset_envelope(signal: FloatArray, rate: float) -> tuple[FloatArray, float]:
    """Log-spectral flux (how much louder each frame got) of decimated mono audio, and
    its frame rate in fps."""
    hop = max(1, round(rate / _ONSET_FPS))
    n_fft = _FFT_PER_HOP * hop
    window = np.hanning(n_fft).astype(np.float32)
    n_frames = 1 + (len(signal) - n_fft) // hop
    if n_frames < 2:
        return np.zeros(0, dtype=np.float32), rate / hop
    frames_view = np.lib.stride_tricks.sliding_window_view(signal, n_fft)[::hop][:n_frames]

    # A small magnitude spectrogram (about 10 MB per minute), filled in batches.
    magnitude = np.empty((n_frames, n_fft // 2 + 1), dtype=np.float32)
    for start in range(0, n_frames, 2048):
        batch = frames_view[start : start + 2048] * window
        magnitude[start : start + len(batch)] = np.abs(np.fft.rfft(batch, axis=1))
    reference = float(magnitude.max())
    if reference <= 0.0:
        return np.zeros(n_frames - 1, dtype=np.float32), rate / hop
    # Log compression relative to the loudest bin, so the level of the file does not matter.
    # In place, as everything below: the spectrogram is the analysis's largest array.
    magnitude *= np.float32(1000.0 / reference)
    np.log1p(magnitude, out=magnitude)
    # Bins below ~40 Hz only carry leakage from lower partials, which ripples with phase.
    lowest = int(np.ceil(40.0 * n_fft / rate))
    flux = np.empty(n_frames - 1, dtype=np.float32)
    for start in range(0, n_frames - 1, 2048):
        stop = min(start + 2048, n_frames - 1)
        rises = magnitude[start + 1 : stop + 1, lowest:] - magnitude[start:stop, lowest:]
        # Only rises above ~1 dB count: steady tones ripple a little from frame to frame
        # (beating partials, window leakage), and that ripple must not read as a beat.
        rises -= _MIN_RISE
        np.maximum(rises, 0.0, out=rises)
        flux[start:stop] = rises.sum(axis=1, dtype=np.float32)
    return flux, rate / hop


def decimate(x: FloatArray, factor: int) -> FloatArray:
    """Low-pass (windowed sinc) and keep every factor-th sample, without aliasing."""
    if factor == 1:
        return x
    taps = _decimation_taps(factor)
    n = np.arange(taps) - (taps - 1) / 2
    kernel = np.sinc(n / factor * 0.9) * np.hamming(taps)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    n_out = (len(x) - taps) // factor + 1
    if n_out <= 0:
        return np.zeros(0, dtype=np.float32)
    out = np.zeros(n_out, dtype=np.float32)
    # Polyphase: only the kept outputs are computed, one strided slice per tap.
    for k in range(taps):
        out += kernel[k] * x[k : k + factor * (n_out - 1) + 1 : factor]
    return out


def _moving_average(x: FloatArray, width: int) -> FloatArray:
    """Centered running mean; near the ends it averages only the samples that exist."""
    width = max(1, min(width, len(x)))
    kernel = np.ones(width, dtype=np.float32)
    total = np.convolve(x, kernel, mode="same")
    count = np.convolve(np.ones(len(x), dtype=np.float32), kernel, mode="same")
    return (total / count).astype(np.float32)


def _autocorrelation(x: FloatArray) -> npt.NDArray[np.float64] | None:
    """Unbiased autocorrelation normalised to 1 at lag 0, or None for a flat signal."""
    n = len(x)
    centered = x.astype(np.float64) - float(x.mean())
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centered, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    if acf[0] <= 1e-12 * n:
        return None
    acf = acf / (n - np.arange(n))  # each lag averages over fewer products
    return np.asarray(acf / acf[0], dtype=np.float64)


def _comb_score(
    acf: npt.NDArray[np.float64], lags: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Mean autocorrelation at the first few multiples of each (fractional) lag."""
    limit = len(acf) // 2
    total = np.zeros(len(lags))
    count = np.zeros(len(lags))
    for k in range(1, 5):
        positions = lags * k
        ok = positions < limit - 1
        total[ok] += np.interp(positions[ok], np.arange(len(acf)), acf)
        count[ok] += 1
    return np.asarray(total / np.maximum(count, 1), dtype=np.float64)
