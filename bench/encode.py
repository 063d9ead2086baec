"""What mastering a track costs: time, memory and the size of each rendition.

Synthesises a stereo 44.1 kHz 16-bit WAV per length (detuned harmonic chords that
change every two seconds, a noise bed, kick, snare and hi-hat: the encoders and the
limiter get real work), then, in a fresh child process per length so the figures are
independent:

- `engines.mastering.master_audio` end to end (decode, loudness passes, limiter, 24-bit
  FLAC, 192 kbps MP3), in seconds and as a multiple of real time;
- the FLAC and MP3 encoders alone, in seconds per minute of audio: the master is
  decoded again block by block and only the encoders' write calls are timed;
- the size of the FLAC master, of the same audio as 16-bit FLAC (for the PCM_16/PCM_24
  choice), of the MP3 and of the WAV that `wav_chunks` would stream;
- the child's peak RSS (`ru_maxrss`) after mastering, next to its RSS once the modules
  are imported and to the size of one float32 copy of the decoded track, which
  mastering never holds: it streams blocks through a scratch file.

    .venv/bin/python -m bench.encode [--seconds 60 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44_100
LENGTHS_S = (60, 300)
MP3_LIMIT_300S_MB = 8.0  # a 300 s track's MP3 must stay under 8 MB
_BLOCK_S = 2  # the synth writes (and changes chord) every two seconds


def synthesise(path: Path, seconds: int, seed: int = 1) -> None:
    """A music-like stereo track, written block by block (never whole in memory)."""
    rng = np.random.default_rng(seed)
    roots = (110.0, 146.8, 164.8, 130.8)  # A, D, E, C
    with sf.SoundFile(path, "w", SR, 2, "PCM_16", format="WAV") as out:
        for index in range(-(-seconds // _BLOCK_S)):
            n = min(_BLOCK_S, seconds - index * _BLOCK_S) * SR
            t = index * _BLOCK_S + np.arange(n) / SR
            block = np.zeros((n, 2))
            root = roots[index % len(roots)]
            for k, ratio in enumerate((1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)):
                amplitude = 0.06 / (1 + k)
                for side, detune in enumerate((1.0, 1.003)):
                    phase = rng.uniform(0, 2 * np.pi)
                    block[:, side] += amplitude * np.sin(
                        2 * np.pi * root * ratio * detune * t + phase
                    )
            block += 0.01 * rng.standard_normal((n, 2))
            beat = t % 0.5  # 120 BPM
            kick = np.exp(-beat * 25) * np.sin(2 * np.pi * 55 * beat * (1 + 2 * np.exp(-beat * 40)))
            snare = np.exp(-((t - 0.5) % 1.0) * 30) * rng.standard_normal(n)
            hat = np.exp(-((t + 0.25) % 0.5) * 200) * rng.standard_normal(n)
            block += (0.7 * kick + 0.25 * snare + 0.15 * hat)[:, None]
            out.write(np.clip(block, -1.0, 1.0))


def child(source: Path, workdir: Path) -> None:
    """Runs in its own process: master once, then time the encoders alone; prints JSON."""
    from engines.mastering import master_audio, wav_size

    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    report = master_audio(source, workdir)
    master_s = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    flac, mp3 = report.renditions
    flac_s = _encode_time(flac.path, workdir / "again.flac", format="FLAC", subtype="PCM_24")
    flac16_s = _encode_time(flac.path, workdir / "16bit.flac", format="FLAC", subtype="PCM_16")
    mp3_s = _encode_time(
        flac.path,
        workdir / "again.mp3",
        format="MP3",
        subtype="MPEG_LAYER_III",
        bitrate_mode="CONSTANT",
        compression_level=(320 - 192) / 288,
    )
    print(
        json.dumps(
            {
                "duration_s": report.duration_s,
                "master_s": master_s,
                "flac_encode_s": flac_s,
                "flac16_encode_s": flac16_s,
                "mp3_encode_s": mp3_s,
                "flac_bytes": flac.size_bytes,
                "flac16_bytes": (workdir / "16bit.flac").stat().st_size,
                "mp3_bytes": mp3.size_bytes,
                "wav_bytes": wav_size(flac.path),
                "baseline_rss_mb": baseline_kb / 1024,
                "peak_rss_mb": peak_kb / 1024,
                "loudness_before": report.loudness_before_lufs,
                "loudness_after": report.loudness_after_lufs,
                "true_peak_after": report.true_peak_after_dbtp,
                "gain_db": report.gain_db,
            }
        )
    )


def _encode_time(master: Path, target: Path, **options: object) -> float:
    """Seconds spent in the encoder's calls (writes and close) re-encoding `master`."""
    spent = 0.0
    with sf.SoundFile(master) as f:
        started = time.perf_counter()
        out = sf.SoundFile(target, "w", f.samplerate, f.channels, **options)
        spent += time.perf_counter() - started
        for block in f.blocks(1 << 16, dtype="float32", always_2d=True):
            started = time.perf_counter()
            out.write(block)
            spent += time.perf_counter() - started
        started = time.perf_counter()
        out.close()
        spent += time.perf_counter() - started
    return spent


def run_child(source: Path, workdir: Path) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.encode", "--child", str(source), str(workdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    figures: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def main(lengths: list[int]) -> None:
    mb = 1e6
    print(
        f"{'length':>7}  {'master':>7}  {'speed':>6}  {'FLAC enc':>8}  {'MP3 enc':>8}  "
        f"{'FLAC':>7}  {'FLAC16':>7}  {'MP3':>6}  {'WAV':>7}  {'peak RSS':>8}  "
        f"{'at import':>9}  {'f32 copy':>8}  {'LUFS in->out':>13}  {'dBTP':>5}"
    )
    print(
        f"{'':>7}  {'s':>7}  {'x rt':>6}  {'s/min':>8}  {'s/min':>8}  {'MB':>7}  {'MB':>7}  "
        f"{'MB':>6}  {'MB':>7}  {'MB':>8}  {'MB':>9}  {'MB':>8}"
    )
    mp3_300s: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in lengths:
            source = Path(tmp) / f"{seconds}.wav"
            synthesise(source, seconds)
            workdir = Path(tmp) / f"out-{seconds}"
            r = run_child(source, workdir)
            minutes = r["duration_s"] / 60
            f32_copy_mb = r["duration_s"] * SR * 2 * 4 / 2**20
            print(
                f"{seconds:>6}s  {r['master_s']:>7.2f}  {r['duration_s'] / r['master_s']:>5.0f}x  "
                f"{r['flac_encode_s'] / minutes:>8.3f}  {r['mp3_encode_s'] / minutes:>8.3f}  "
                f"{r['flac_bytes'] / mb:>7.2f}  {r['flac16_bytes'] / mb:>7.2f}  "
                f"{r['mp3_bytes'] / mb:>6.2f}  {r['wav_bytes'] / mb:>7.2f}  "
                f"{r['peak_rss_mb']:>8.0f}  {r['baseline_rss_mb']:>9.0f}  {f32_copy_mb:>8.0f}  "
                f"{r['loudness_before']:>6.1f}->{r['loudness_after']:>5.1f}  "
                f"{r['true_peak_after']:>5.2f}"
            )
            if seconds == 300:
                mp3_300s = r["mp3_bytes"] / mb
    if mp3_300s is not None:
        verdict = "met" if mp3_300s < MP3_LIMIT_300S_MB else "MISSED"
        print(f"target: 300 s MP3 < {MP3_LIMIT_300S_MB:.0f} MB: {mp3_300s:.2f} MB, {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, nargs="+", default=list(LENGTHS_S))
    parser.add_argument("--child", nargs=2, metavar=("SOURCE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]))
    else:
        main(args.seconds)
