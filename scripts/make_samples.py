"""Rebuild samples/ (the README demo clip and reference still) from ../shared/data/film.

The clip is 200 frames (about 6.9 s) of the DeepRemaster "A-Bomb Blast Effects" example, with
a shot cut inside, re-encoded with x264 (CRF 16, yuv420p) at its own size and 29 fps. Its
archive copy has no sound, so a synthetic projector-like soundtrack (hum, flutter and hiss,
AAC stereo 48 kHz) is added: the demo and the tests need a real audio stream to copy.
The reference is one of the DeepRemaster hand-coloured frames of the same film, as JPEG.

Usage: python scripts/make_samples.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FIRST_FRAME, N_FRAMES = 100, 200  # the sign shot, a cut, then the trucks
SAMPLE_RATE = 48000  # Hz
REFERENCE = "0001063_out.png"  # hand-coloured frame of the trucks shot


def build_clip(src: Path, out: Path) -> None:
    with av.open(str(src)) as source, av.open(str(out), mode="w") as target:
        in_stream = source.streams.video[0]
        rate = Fraction(in_stream.average_rate)
        video = target.add_stream("libx264", rate=rate, options={"crf": "16", "preset": "slow"})
        video.width, video.height, video.pix_fmt = in_stream.width, in_stream.height, "yuv420p"
        sound = target.add_stream("aac", rate=SAMPLE_RATE)
        sound.layout = "stereo"
        for index, frame in enumerate(source.decode(in_stream)):
            if index < FIRST_FRAME:
                continue
            if index >= FIRST_FRAME + N_FRAMES:
                break
            gray = frame.to_ndarray(format="gray")
            rgb = np.repeat(gray[..., None], 3, axis=2)
            new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            new.pts = index - FIRST_FRAME
            new.time_base = 1 / rate
            target.mux(video.encode(new))
        target.mux(video.encode(None))
        write_soundtrack(target, sound, N_FRAMES / float(rate))


def write_soundtrack(container, stream, duration_s: float) -> None:
    """Projector-like sound: 60 Hz hum, 24 Hz shutter flutter and soft hiss, deterministic."""
    rng = np.random.default_rng(0)
    t = np.arange(int(duration_s * SAMPLE_RATE)) / SAMPLE_RATE
    hum = 0.08 * np.sin(2 * np.pi * 60 * t) + 0.03 * np.sin(2 * np.pi * 180 * t)
    flutter = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * t)
    hiss = 0.04 * rng.standard_normal(t.size)
    left = (hum + flutter * hiss).astype(np.float32)
    right = (hum + flutter * np.roll(hiss, 37)).astype(np.float32)
    for start in range(0, t.size, 1024):
        chunk = np.stack([left[start:start + 1024], right[start:start + 1024]])
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                           layout="stereo")
        frame.sample_rate, frame.pts = SAMPLE_RATE, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared")
    args = parser.parse_args()
    film = args.shared / "data" / "film" / "deepremaster_abomb"
    if not film.is_dir():
        sys.exit(f"{film} not found: this script needs ../shared/data/film beside the project")
    out_dir = ROOT / "samples"
    out_dir.mkdir(exist_ok=True)
    build_clip(film / "a-bomb_blast_effects_part.mp4", out_dir / "film.mp4")
    Image.open(film / "references" / REFERENCE).convert("RGB").save(out_dir / "ref.jpg", quality=92)
    for name in ("film.mp4", "ref.jpg"):
        print(out_dir / name, (out_dir / name).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
