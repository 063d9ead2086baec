"""The local synth provider: what a listener (and the workflow) gets from it."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import soundfile as sf

from activities.providers.base import DownloadedAudio, JobState, ProviderError
from activities.providers.synth import SynthProvider, plan_music
from core.contracts import ErrorCode, GenerationRequest, Submission
from engines.audio import analyze, quality_problem
from engines.synth import (
    SAMPLE_RATE,
    LeadTimbre,
    SynthRenderer,
    Voice,
    compose,
    degree_to_midi,
)

pytestmark = pytest.mark.unit

REQUEST = GenerationRequest(prompt="warm lofi beat with soft keys", duration_s=12, seed=7)


@dataclass
class Rendered:
    path: Path
    result: DownloadedAudio
    heartbeats: list[float]


def _submission(request: GenerationRequest) -> Submission:
    return Submission(
        track_id=uuid.uuid4(),
        job_id=uuid.uuid4(),
        provider="synth",
        run_id="synth-test",
        request=request,
    )


async def _render(
    path: Path, request: GenerationRequest, provider: SynthProvider | None = None
) -> Rendered:
    heartbeats: list[float] = []
    result = await (provider or SynthProvider()).download(
        _submission(request), path, heartbeats.append
    )
    return Rendered(path, result, heartbeats)


@pytest_asyncio.fixture(scope="module")
async def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    return await _render(tmp_path_factory.mktemp("synth") / "track.wav", REQUEST)


def test_writes_a_cd_quality_stereo_wav_of_exactly_the_requested_length(
    rendered: Rendered,
) -> None:
    info = sf.info(rendered.path)
    assert (info.format, info.subtype) == ("WAV", "PCM_16")
    assert info.samplerate == 44_100
    assert info.channels == 2
    assert info.frames == REQUEST.duration_s * 44_100
    assert rendered.result == DownloadedAudio("wav", "audio/wav")


def test_is_loud_enough_never_clips_and_starts_and_ends_cleanly(rendered: Rendered) -> None:
    info = analyze(rendered.path)
    assert info.rms_dbfs > -30
    assert -3.0 < info.peak_dbfs < -0.5  # mastered to about -1 dBFS
    assert quality_problem(info, REQUEST.duration_s) is None

    samples, _ = sf.read(rendered.path, dtype="int16")
    assert np.abs(samples.astype(np.int32)).max() < 32_767
    # Fades: playback starts and stops from silence, without a click.
    assert np.abs(samples[0]).max() <= 1 and np.abs(samples[-1]).max() <= 1
    assert np.abs(samples[:10]).max() < 330  # under 1% of full scale
    assert np.abs(samples[-10:]).max() < 330


def test_heartbeats_rise_with_each_chunk_and_end_at_one(rendered: Rendered) -> None:
    beats = rendered.heartbeats
    assert len(beats) >= REQUEST.duration_s  # at least one per second of audio
    assert all(0.0 < b <= 1.0 for b in beats)
    assert all(later > earlier for earlier, later in itertools.pairwise(beats))
    assert beats[-1] == 1.0


def test_plays_a_chord_progression_in_key_not_a_beep(rendered: Rendered) -> None:
    plan = plan_music(REQUEST)
    samples, _ = sf.read(rendered.path)
    spectrum = np.abs(np.fft.rfft(samples.mean(axis=1))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)
    band = (freqs > 150) & (freqs < 2000)  # above the kick, where chords and melody live
    pitch_class = np.round(12 * np.log2(freqs[band] / 440) + 69).astype(int) % 12
    chroma = np.bincount(pitch_class, weights=spectrum[band], minlength=12)

    scale = {degree_to_midi(plan, degree) % 12 for degree in range(7)}
    assert sum(chroma[pc] for pc in scale) / chroma.sum() > 0.85
    assert (chroma > 0.2 * chroma.max()).sum() >= 4  # several notes sound, not one tone


@pytest.mark.parametrize(
    "request_",
    [
        GenerationRequest(prompt="slow chill ambient", duration_s=8, seed=1, style_strength=0.1),
        GenerationRequest(prompt="driving synthwave", duration_s=8, seed=2),
        GenerationRequest(prompt="energetic dance", duration_s=8, seed=3, has_vocals=True),
    ],
    ids=["slow-sparse", "mid", "fast-vocal"],
)
async def test_has_a_beat_at_the_planned_tempo(tmp_path: Path, request_: GenerationRequest) -> None:
    track = await _render(tmp_path / "beat.wav", request_)
    bpm = analyze(track.path).bpm
    assert bpm is not None
    assert bpm == pytest.approx(plan_music(request_).tempo_bpm, rel=0.03)


async def test_same_prompt_and_seed_give_identical_bytes(tmp_path: Path) -> None:
    request = GenerationRequest(prompt="rainy jazz cafe", duration_s=4, seed=11)
    first = await _render(tmp_path / "a.wav", request)
    # A fresh provider, as after a worker restart, renders the very same file.
    second = await _render(tmp_path / "b.wav", request, SynthProvider())
    assert first.path.read_bytes() == second.path.read_bytes()


async def test_different_prompt_or_seed_gives_different_music(tmp_path: Path) -> None:
    base = GenerationRequest(prompt="rainy jazz cafe", duration_s=4, seed=11)
    variants = [
        base,
        base.model_copy(update={"prompt": "sunny beach"}),
        base.model_copy(update={"seed": 12}),
    ]
    audio = []
    for index, request in enumerate(variants):
        track = await _render(tmp_path / f"{index}.wav", request)
        audio.append(sf.read(track.path)[0])
    assert not np.array_equal(audio[0], audio[1])
    assert not np.array_equal(audio[0], audio[2])
    assert plan_music(variants[0]) != plan_music(variants[1])


async def test_pace_stretches_the_render_in_wall_clock_time(tmp_path: Path) -> None:
    request = GenerationRequest(prompt="slow render", duration_s=2)
    started = time.monotonic()
    await _render(tmp_path / "paced.wav", request, SynthProvider(pace=0.5))
    assert time.monotonic() - started >= 0.9


async def test_event_loop_stays_responsive_while_rendering(tmp_path: Path) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    try:
        await _render(tmp_path / "busy.wav", GenerationRequest(prompt="busy", duration_s=6))
    finally:
        done.set()
        await ticking
    assert len(gaps) >= 3
    assert max(gaps) < 0.5  # each chunk's DSP runs in a thread, never on the loop


async def test_job_is_free_deterministic_and_always_done() -> None:
    synth = SynthProvider()
    run_id, urls = await synth.submit(REQUEST, track_id="t-1")
    assert run_id.startswith("synth-")
    assert urls == {}
    assert await synth.submit(REQUEST, track_id="t-1") == (run_id, {})
    assert (await synth.submit(REQUEST, track_id="t-2"))[0] != run_id

    submission = _submission(REQUEST)
    poll = await synth.poll(submission)
    assert (poll.state, poll.progress) == (JobState.SUCCEEDED, 1.0)
    await synth.cancel(submission)  # nothing to cancel, and no error
    assert (await synth.health()).status == "ok"
    assert synth.configured
    assert synth.name == "synth"
    assert synth.model_for(REQUEST) == "procedural-v1"


async def test_serves_vocals_and_any_sensible_length_but_not_absurd_ones(
    tmp_path: Path,
) -> None:
    synth = SynthProvider()
    vocal = GenerationRequest(prompt="ballad", duration_s=5, has_vocals=True, lyrics="la la")
    assert synth.cannot_serve(vocal) is None
    assert synth.cannot_serve(vocal.model_copy(update={"duration_s": 300})) is None
    assert plan_music(vocal).lead_timbre is LeadTimbre.VOICE

    for duration in (0, 601):
        absurd = vocal.model_copy(update={"duration_s": duration})
        assert synth.cannot_serve(absurd)
        with pytest.raises(ProviderError) as raised:
            await synth.download(_submission(absurd), tmp_path / "x.wav", lambda _: None)
        assert raised.value.code is ErrorCode.UNSUPPORTED


def test_style_strength_adds_percussion_and_brightness() -> None:
    def hats(style: float) -> int:
        plan = plan_music(REQUEST.model_copy(update={"style_strength": style}))
        return sum(1 for note in compose(plan) if note.voice is Voice.HAT)

    assert hats(0.0) < hats(0.5) < hats(1.0)
    dull = plan_music(REQUEST.model_copy(update={"style_strength": 0.0}))
    bright = plan_music(REQUEST.model_copy(update={"style_strength": 1.0}))
    assert dull.brightness < bright.brightness
    assert dull.tempo_bpm == bright.tempo_bpm  # style shapes the sound, not the song


def test_mood_words_in_the_prompt_steer_tempo_and_mode() -> None:
    for seed in range(8):
        slow = plan_music(
            GenerationRequest(prompt="slow calm sleep music", duration_s=30, seed=seed)
        )
        fast = plan_music(GenerationRequest(prompt="energetic workout", duration_s=30, seed=seed))
        sad = plan_music(GenerationRequest(prompt="sad rainy night", duration_s=30, seed=seed))
        happy = plan_music(
            GenerationRequest(prompt="happy sunny morning", duration_s=30, seed=seed)
        )
        assert 70 <= slow.tempo_bpm <= 92 < 112 <= fast.tempo_bpm <= 130
        assert sad.minor and not happy.minor


def test_chunk_boundaries_are_seamless() -> None:
    plan = plan_music(GenerationRequest(prompt="seams", duration_s=3, seed=5))
    renderer = SynthRenderer(plan)
    whole = renderer.render(0, plan.total_frames)
    pieces = np.concatenate(
        [
            renderer.render(start, min(10_007, plan.total_frames - start))
            for start in range(0, plan.total_frames, 10_007)
        ]
    )
    np.testing.assert_array_equal(whole, pieces)
    assert math.isclose(float(np.abs(whole).max()), 10 ** (-1 / 20), rel_tol=0.1)
