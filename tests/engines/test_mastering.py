"""`engines.mastering` on real files: levels as an independent meter reads them, renditions
that decode to the right length, byte-identical reruns, and the streamed WAV.

Inputs are synthesised here (harmonics, noise, kick and hi-hat transients) and written
with soundfile; every figure is checked by decoding the written files again and
measuring them with libebur128 (pyebur128), the meter the engine itself uses.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyebur128
import pytest
import soundfile as sf

from engines.audio import AudioDecodeError
from engines.mastering import (
    TARGET_SAMPLE_RATE,
    MasterReport,
    master_audio,
    wav_chunks,
    wav_size,
)

pytestmark = pytest.mark.unit

SR = 44_100
Audio = npt.NDArray[np.float64]


# --- signals and measurements ----------------------------------------------------------


def _music(seconds: float, channels: int, sr: int = SR, seed: int = 0) -> Audio:
    """Music-like test audio: detuned harmonics, a noise bed, a kick on every half
    second and a hi-hat between (crest factor about 20 dB, so a limiter has work)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    out = np.zeros((n, channels))
    for c in range(channels):
        for k, freq in enumerate((110, 165, 220, 330, 440, 880, 1760, 3520)):
            phase = rng.uniform(0, 2 * np.pi)
            out[:, c] += 0.08 / (k + 1) * np.sin(2 * np.pi * freq * (1 + 0.002 * c) * t + phase)
        out[:, c] += 0.01 * rng.standard_normal(n)
    beat = t % 0.5
    kick = np.exp(-beat * 25) * np.sin(2 * np.pi * 60 * beat * (1 + 2 * np.exp(-beat * 40)))
    hat = np.exp(-((t + 0.25) % 0.5) * 200) * rng.standard_normal(n)
    return out + (0.9 * kick + 0.5 * hat)[:, None]


@dataclass(frozen=True)
class Levels:
    loudness: float | None
    true_peak: float | None
    frames: int
    sample_rate: int
    channels: int


def _measure(audio: Audio, sr: int) -> Levels:
    state = pyebur128.R128State(
        audio.shape[1],
        sr,
        pyebur128.MeasurementMode.MODE_I | pyebur128.MeasurementMode.MODE_TRUE_PEAK,
    )
    state.add_frames(np.ascontiguousarray(audio, dtype=np.float64).ravel(), len(audio))
    lufs = float(pyebur128.get_loudness_global(state))
    peak = max(pyebur128.get_true_peak(state, c) for c in range(audio.shape[1]))
    return Levels(
        loudness=lufs if math.isfinite(lufs) else None,
        true_peak=20 * math.log10(peak) if peak > 0 else None,
        frames=len(audio),
        sample_rate=sr,
        channels=audio.shape[1],
    )


def _decode(path: Path) -> tuple[Audio, int]:
    audio, sr = sf.read(path, dtype="float64", always_2d=True)
    return audio, sr


def _measure_file(path: Path) -> Levels:
    return _measure(*_decode(path))


def _at_loudness(audio: Audio, lufs: float, sr: int = SR) -> Audio:
    measured = _measure(audio, sr).loudness
    assert measured is not None
    return audio * 10 ** ((lufs - measured) / 20)


def _write(path: Path, audio: Audio, sr: int = SR, **kwargs: str) -> Path:
    sf.write(path, audio, sr, **kwargs)
    return path


def _lag(reference: Audio, other: Audio, search: int = 2000) -> int:
    """The shift (frames) that best lines `other` up with `reference` (first channel)."""
    a, b = reference[:, 0], other[:, 0]
    size = 1 << (len(a) + len(b)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.concatenate((np.arange(0, search + 1), np.arange(-search, 0)))
    values = np.concatenate((corr[: search + 1], corr[-search:]))
    return int(lags[int(np.argmax(values))])


# --- inputs ----------------------------------------------------------------------------


def _quiet_stereo(tmp: Path) -> Path:
    return _write(tmp / "quiet.wav", _at_loudness(_music(6, 2), -35.0), subtype="FLOAT")


def _quiet_mono_odd(tmp: Path) -> Path:
    # An odd frame count: the 24-bit mono WAV made from it needs a pad byte.
    audio = _at_loudness(_music(5, 1, seed=3), -35.0)[: 5 * SR - 1]
    return _write(tmp / "quiet-mono.flac", audio, subtype="PCM_24")


def _loud_stereo(tmp: Path) -> Path:
    # -8 LUFS of material with 20 dB of crest: its drums clip at full scale.
    audio = np.clip(_at_loudness(_music(6, 2, seed=1), -8.0), -1.0, 1.0)
    return _write(tmp / "loud.wav", audio, subtype="PCM_16")


def _clipped_mono(tmp: Path) -> Path:
    t = np.arange(6 * SR) / SR
    square_ish = 1.5 * np.sin(2 * np.pi * 220 * t)[:, None] + 0.3 * _music(6, 1, seed=2)
    return _write(tmp / "clipped.wav", np.clip(square_ish, -1.0, 1.0), subtype="PCM_16")


def _clipped_stereo(tmp: Path) -> Path:
    audio = np.clip(4.0 * _music(6, 2, seed=4), -1.0, 1.0)  # drums flattened at 0 dBFS
    return _write(tmp / "clipped-stereo.wav", audio, subtype="PCM_16")


def _stereo_48k(tmp: Path) -> Path:
    audio = _at_loudness(_music(6, 2, sr=48_000, seed=5), -20.0, sr=48_000)
    return _write(tmp / "48k.wav", audio, sr=48_000, subtype="PCM_24")


def _mp3(tmp: Path) -> Path:
    audio = _at_loudness(_music(6, 2, seed=6), -12.0)
    return _write(tmp / "input.mp3", audio, format="MP3", subtype="MPEG_LAYER_III")


def _surround(tmp: Path) -> Path:
    audio = _at_loudness(_music(5, 6, seed=7), -25.0)
    return _write(tmp / "surround.wav", audio, subtype="PCM_16")


INPUTS = {
    "quiet-stereo": _quiet_stereo,
    "quiet-mono": _quiet_mono_odd,
    "loud-stereo": _loud_stereo,
    "clipped-mono": _clipped_mono,
    "clipped-stereo": _clipped_stereo,
    "48k": _stereo_48k,
    "mp3": _mp3,
    "5.1": _surround,
}


def _check_renditions(report: MasterReport, source: Levels) -> None:
    """Each rendition is what the report says and decodes to the source's length."""
    flac, mp3 = report.renditions
    assert (flac.format, flac.content_type, flac.bitrate_kbps) == ("flac", "audio/flac", None)
    assert (mp3.format, mp3.content_type, mp3.bitrate_kbps) == ("mp3", "audio/mpeg", 192)
    assert flac.path.name == "master.flac" and mp3.path.name == "stream.mp3"
    expected_s = source.frames / source.sample_rate
    channels = min(source.channels, 2)
    assert report.duration_s == pytest.approx(expected_s, abs=0.05)
    assert report.sample_rate == TARGET_SAMPLE_RATE
    assert report.source_sample_rate == source.sample_rate
    assert report.channels == channels
    for rendition in (flac, mp3):
        audio, sr = _decode(rendition.path)
        assert rendition.size_bytes == rendition.path.stat().st_size
        assert sr == rendition.sample_rate == TARGET_SAMPLE_RATE
        assert audio.shape[1] == rendition.channels == channels
        assert len(audio) / sr == pytest.approx(expected_s, abs=0.05)
        assert rendition.duration_s == pytest.approx(len(audio) / sr)
    assert sf.info(str(flac.path)).subtype == "PCM_24"


# --- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("make_input", INPUTS.values(), ids=INPUTS.keys())
def test_master_lands_on_target_loudness_under_the_true_peak_ceiling(
    tmp_path: Path, make_input: Callable[[Path], Path]
) -> None:
    source_path = make_input(tmp_path)
    source = _measure_file(source_path)

    report = master_audio(source_path, tmp_path / "out")

    master = _measure_file(report.renditions[0].path)
    assert master.loudness is not None and master.true_peak is not None
    assert master.loudness == pytest.approx(-14.0, abs=0.2)
    assert master.true_peak < -1.0
    # The report's figures are what an independent reading of the files gives.
    assert report.loudness_before_lufs == pytest.approx(source.loudness, abs=0.01)
    assert report.true_peak_before_dbtp == pytest.approx(source.true_peak, abs=0.01)
    assert report.loudness_after_lufs == pytest.approx(master.loudness, abs=0.01)
    assert report.true_peak_after_dbtp == pytest.approx(master.true_peak, abs=0.01)
    if source.sample_rate == SR and source.channels <= 2 and source.loudness is not None:
        # Limiting only takes loudness away, so the gain is at least the plain one.
        assert report.gain_db >= -14.0 - source.loudness - 0.2
    _check_renditions(report, source)

    # The MP3 decodes aligned with the master and the same length (libsndfile writes
    # LAME's delay/padding tag and its mpg123 decoder trims by it), at about the same
    # loudness: a little lower, as the encoder low-passes what the synthetic hi-hat
    # puts above 17 kHz, which K-weighting counts at +4 dB.
    flac_audio, _ = _decode(report.renditions[0].path)
    mp3_audio, _ = _decode(report.renditions[1].path)
    assert len(mp3_audio) == len(flac_audio)
    assert _lag(flac_audio, mp3_audio) == 0
    mp3_loudness = _measure(mp3_audio, SR).loudness
    assert mp3_loudness is not None and abs(mp3_loudness - master.loudness) < 1.0


def test_the_limiter_does_the_work_a_plain_gain_cannot(tmp_path: Path) -> None:
    """-35 LUFS with 20 dB of crest: a plain +21 dB would put peaks at about +8 dBTP."""
    source_path = _quiet_stereo(tmp_path)
    source = _measure_file(source_path)
    assert source.loudness is not None and source.true_peak is not None
    assert source.true_peak + (-14.0 - source.loudness) > 5.0

    report = master_audio(source_path, tmp_path / "out")

    assert report.gain_db > -14.0 - source.loudness  # makeup for what the limiter took
    master, _ = _decode(report.renditions[0].path)
    original, _ = _decode(source_path)

    def gain_over(start_s: float, stop_s: float) -> float:
        part = slice(int(start_s * SR), int(stop_s * SR))
        return 20 * math.log10(np.abs(master[part]).max() / np.abs(original[part]).max())

    # The kick and the hi-hat are pulled well down; between them the limiter lets go and
    # the bed gets (almost) the whole makeup gain.
    assert gain_over(0.0, 0.02) < report.gain_db - 5.0  # kick
    assert gain_over(0.25, 0.26) < report.gain_db - 5.0  # hi-hat
    assert gain_over(0.3, 0.45) == pytest.approx(report.gain_db, abs=2.0)


def test_a_non_default_target_and_ceiling_are_honoured(tmp_path: Path) -> None:
    source_path = _loud_stereo(tmp_path)
    report = master_audio(source_path, tmp_path / "out", target_lufs=-18.0, ceiling_dbtp=-2.0)
    master = _measure_file(report.renditions[0].path)
    assert master.loudness == pytest.approx(-18.0, abs=0.2)
    assert master.true_peak is not None and master.true_peak < -2.0
    assert report.loudness_after_lufs == pytest.approx(master.loudness, abs=0.01)


def test_a_target_out_of_the_limiters_reach_is_approached_not_forced(tmp_path: Path) -> None:
    """-5 LUFS under a -1 dBTP ceiling would take this material about 40 dB of limiting:
    the makeup gain stops 12 dB over the plain gain, the ceiling still holds."""
    source_path = _quiet_stereo(tmp_path)
    report = master_audio(source_path, tmp_path / "out", target_lufs=-5.0)
    master = _measure_file(report.renditions[0].path)
    assert master.true_peak is not None and master.true_peak < -1.0
    assert master.loudness is not None and -12.0 < master.loudness < -5.5
    assert report.loudness_before_lufs is not None
    assert report.gain_db <= -5.0 - report.loudness_before_lufs + 12.0 + 0.01


def test_reruns_are_byte_identical_and_heartbeat_often(tmp_path: Path) -> None:
    # 48 kHz, quiet: the resampler, the limiter and several passes all take part.
    source_path = _write(
        tmp_path / "in.wav",
        _at_loudness(_music(20, 2, sr=48_000, seed=8), -30.0, sr=48_000),
        sr=48_000,
        subtype="PCM_16",
    )
    beats: list[float] = []
    started = time.monotonic()
    first = master_audio(
        source_path, tmp_path / "a", heartbeat=lambda: beats.append(time.monotonic())
    )
    finished = time.monotonic()
    second = master_audio(source_path, tmp_path / "b")

    for one, other in zip(first.renditions, second.renditions, strict=True):
        assert one.path.read_bytes() == other.path.read_bytes()
    assert replace(first, renditions=()) == replace(second, renditions=())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["master.flac", "stream.mp3"]
    gaps = np.diff([started, *beats, finished])
    assert len(beats) >= 2 and gaps.max() < 1.0


def test_the_mp3_is_constant_bitrate_so_300_s_fit_in_8_mb(tmp_path: Path) -> None:
    report = master_audio(_clipped_mono(tmp_path), tmp_path / "out")
    mp3 = report.renditions[1]
    # 192 kbps CBR: 24,000 bytes a second, plus one tag frame and the last frame.
    assert mp3.size_bytes == pytest.approx(mp3.duration_s * 24_000, abs=2 * 1_300)
    assert 300 * 24_000 + 2 * 1_300 < 8_000_000

    low = master_audio(_clipped_mono(tmp_path), tmp_path / "low", mp3_bitrate_kbps=128)
    assert low.renditions[1].bitrate_kbps == 128
    assert low.renditions[1].size_bytes == pytest.approx(
        low.renditions[1].duration_s * 16_000, abs=2 * 1_300
    )


@pytest.mark.parametrize("block_frames", [65536, 999])
def test_wav_chunks_stream_a_wav_with_the_masters_samples(
    tmp_path: Path, block_frames: int
) -> None:
    report = master_audio(_quiet_mono_odd(tmp_path), tmp_path / "out")
    flac_path = report.renditions[0].path

    chunks = list(wav_chunks(flac_path, block_frames))
    data = b"".join(chunks)

    assert len(data) == wav_size(flac_path)
    assert len(chunks[0]) == 44 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert len(data) % 2 == 0  # mono 24-bit, odd frame count: padded
    with sf.SoundFile(io.BytesIO(data)) as wav:
        assert (wav.format, wav.subtype) == ("WAV", "PCM_24")
        assert (wav.samplerate, wav.channels) == (SR, 1)
        wav_samples = wav.read(dtype="int32")
    flac_samples, _ = sf.read(flac_path, dtype="int32")
    assert np.array_equal(wav_samples, flac_samples)


def test_wav_chunks_of_a_16_bit_stereo_flac(tmp_path: Path) -> None:
    audio = 0.5 * _music(1.0, 2)
    flac_path = _write(tmp_path / "in.flac", audio, subtype="PCM_16")
    data = b"".join(wav_chunks(flac_path, 4096))
    assert len(data) == wav_size(flac_path) == 44 + 2 * 2 * SR
    wav_samples, sr = sf.read(io.BytesIO(data), dtype="int16")
    flac_samples, _ = sf.read(flac_path, dtype="int16")
    assert sr == SR and np.array_equal(wav_samples, flac_samples)


def test_silence_is_transcoded_without_gain(tmp_path: Path) -> None:
    source_path = _write(tmp_path / "silence.wav", np.zeros((3 * SR, 2)), subtype="PCM_16")
    report = master_audio(source_path, tmp_path / "out")
    assert report.loudness_before_lufs is None and report.loudness_after_lufs is None
    assert report.true_peak_before_dbtp is None and report.true_peak_after_dbtp is None
    assert report.gain_db == 0.0
    _check_renditions(report, _measure_file(source_path))
    master, _ = _decode(report.renditions[0].path)
    assert not master.any()


def test_audio_too_short_to_gate_keeps_its_level_under_the_ceiling(tmp_path: Path) -> None:
    """0.2 s has no integrated loudness (BS.1770 gates 400 ms blocks): no gain, but
    the ceiling still holds."""
    click = np.clip(3.0 * _music(0.2, 2), -1.0, 1.0)
    source_path = _write(tmp_path / "click.wav", click, subtype="PCM_16")
    report = master_audio(source_path, tmp_path / "out")
    assert report.loudness_before_lufs is None and report.loudness_after_lufs is None
    assert report.gain_db == 0.0
    master = _measure_file(report.renditions[0].path)
    assert master.true_peak is not None and master.true_peak < -1.0
    assert report.true_peak_after_dbtp == pytest.approx(master.true_peak, abs=0.01)
    _check_renditions(report, _measure_file(source_path))


def test_rejects_what_is_not_audio_and_bad_settings(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 100)
    with pytest.raises(AudioDecodeError):
        master_audio(garbage, tmp_path / "out")
    assert not (tmp_path / "out" / "master.flac").exists()
    assert list((tmp_path / "out").iterdir()) == []  # no scratch or part files left
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioDecodeError):
        master_audio(empty, tmp_path / "out")
    source = _clipped_mono(tmp_path)
    with pytest.raises(ValueError):
        master_audio(source, tmp_path / "out", mp3_bitrate_kbps=100)
    with pytest.raises(ValueError):
        master_audio(source, tmp_path / "out", ceiling_dbtp=1.0)
