"""What `engines.audio` reports about real files, and what it rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.contracts import AudioInfo
from engines.audio import AudioDecodeError, analyze, estimate_tempo, quality_problem

pytestmark = pytest.mark.unit

SR = 44_100


def _tone(seconds: float, freq: float = 1000.0, amplitude: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    return np.stack([mono, mono], axis=1)


def _click_track(seconds: float, bpm: float, sr: int = SR) -> np.ndarray:
    """Short noise bursts on every beat over a quiet tone: the simplest music with a pulse."""
    rng = np.random.default_rng(1)
    audio = _tone(seconds, 220.0, 0.05, sr)[:, 0]
    burst = rng.uniform(-0.6, 0.6, 600) * np.exp(-np.arange(600) / 120)
    for beat in np.arange(0, seconds, 60 / bpm):
        start = int(beat * sr)
        end = min(len(audio), start + len(burst))
        audio[start:end] += burst[: end - start]
    return np.stack([audio, audio], axis=1)


def _write(path: Path, audio: np.ndarray, sr: int = SR, **kwargs: str) -> Path:
    sf.write(path, audio, sr, **kwargs)
    return path


def test_reports_duration_levels_and_loudness_of_a_tone(tmp_path: Path) -> None:
    tone = _tone(3.0, amplitude=0.5, sr=48_000)
    info = analyze(_write(tmp_path / "tone.wav", tone, sr=48_000))

    assert info.duration_s == pytest.approx(3.0)
    assert info.sample_rate == 48_000
    assert info.channels == 2
    assert info.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert info.rms_dbfs == pytest.approx(-9.03, abs=0.05)
    # BS.1770: a 1 kHz sine at -6 dBFS in both channels reads about -6 LUFS.
    assert info.loudness_lufs == pytest.approx(-6.0, abs=0.3)
    assert info.bpm is None  # a steady tone has no beat


def test_peaks_draw_the_waveform(tmp_path: Path) -> None:
    loud_then_quiet = np.concatenate([_tone(2.0, amplitude=0.8), _tone(2.0, amplitude=0.1)])
    info = analyze(_write(tmp_path / "shape.wav", loud_then_quiet), n_peaks=100)

    assert len(info.peaks) == 100
    assert all(0.0 <= p <= 1.0 for p in info.peaks)
    assert min(info.peaks[:50]) == pytest.approx(0.8, abs=0.01)
    assert max(info.peaks[50:]) == pytest.approx(0.1, abs=0.01)
    assert len(analyze(tmp_path / "shape.wav").peaks) == 400


@pytest.mark.parametrize("bpm", [72.0, 100.0, 128.0])
def test_estimates_the_tempo_of_a_beat(tmp_path: Path, bpm: float) -> None:
    info = analyze(_write(tmp_path / "clicks.wav", _click_track(12.0, bpm)))
    assert info.bpm == pytest.approx(bpm, rel=0.02)


def test_the_tempo_alone_matches_the_full_analysis_and_can_be_skipped(tmp_path: Path) -> None:
    path = _write(tmp_path / "clicks.flac", _click_track(12.0, 100.0))
    full = analyze(path)
    quick = analyze(path, tempo=False)
    assert quick.bpm is None
    assert quick.model_copy(update={"bpm": full.bpm}) == full
    assert estimate_tempo(path) == full.bpm == pytest.approx(100.0, rel=0.02)
    assert estimate_tempo(_write(tmp_path / "short.wav", _click_track(2.0, 100.0))) is None


def test_noise_has_no_tempo(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, (10 * SR, 2))
    assert analyze(_write(tmp_path / "noise.wav", noise)).bpm is None


@pytest.mark.parametrize(
    ("fmt", "extension"), [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")]
)
def test_decodes_common_formats(tmp_path: Path, fmt: str, extension: str) -> None:
    path = _write(tmp_path / f"tone.{extension}", _tone(2.0, amplitude=0.5), format=fmt)
    info = analyze(path)
    assert info.duration_s == pytest.approx(2.0, abs=0.1)  # lossy codecs pad a little
    assert info.channels == 2
    assert info.peak_dbfs == pytest.approx(-6.0, abs=1.0)


def test_silence_is_measurable_and_flagged(tmp_path: Path) -> None:
    info = analyze(_write(tmp_path / "silence.wav", np.zeros((5 * SR, 2))))

    assert info.loudness_lufs is None
    assert info.bpm is None
    assert max(info.peaks) == 0.0
    assert quality_problem(info, 5) == "audio is silent (rms -inf dBFS)"
    # Silence still travels as JSON through Temporal (no infinities that come back as null).
    assert AudioInfo.model_validate_json(info.model_dump_json()) == info


def test_very_short_audio_has_no_loudness_but_does_not_fail(tmp_path: Path) -> None:
    info = analyze(_write(tmp_path / "blip.wav", _tone(0.1)))
    assert info.duration_s == pytest.approx(0.1)
    assert info.loudness_lufs is None
    assert info.bpm is None


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not audio" * 64, b"RIFF\x24\x00\x00\x00WAVEfmt "],
    ids=["empty", "text", "truncated-header"],
)
def test_undecodable_bytes_raise_audio_decode_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "track.wav"
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError, match=r"track\.wav"):
        analyze(path)


def test_quality_problem_explains_wrong_length_and_accepts_good_audio(tmp_path: Path) -> None:
    info = analyze(_write(tmp_path / "tone.wav", _tone(12.0)))

    assert quality_problem(info, 20) == "duration 12.0 s is not within 10% of 20 s"
    assert quality_problem(info, 12) is None
    assert quality_problem(info, 13) is None  # 12 s is within 10% of 13 s
    assert quality_problem(info, 13, tolerance=0.05) is not None
    quiet = info.model_copy(update={"rms_dbfs": -72.5})
    assert quality_problem(quiet, 12) == "audio is silent (rms -72.5 dBFS)"
    assert quality_problem(quiet, 12, silence_dbfs=-80) is None


def test_a_minute_of_stereo_is_analysed_in_full(tmp_path: Path) -> None:
    # Its speed is measured by bench/audio_analysis.py.
    path = _write(tmp_path / "minute.wav", _click_track(60.0, 120.0), subtype="PCM_16")
    info = analyze(path)
    assert info.duration_s == pytest.approx(60.0)
    assert info.bpm == pytest.approx(120.0, rel=0.02)
    assert len(info.peaks) == 400
