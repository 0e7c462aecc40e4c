"""Speed benchmark: per-stage ms/frame and end-to-end frames/s at a given size (default 480p).

It builds a test film by scaling the bundled sample (samples/film.mp4, real footage with
sound) to WIDTHxHEIGHT, then times each stage alone on the same frames (decode, colorize,
temporal, encode) and the whole `colorize_video` run. Stage times are wall-clock ms per frame
after one warm-up batch; the end-to-end number includes model loading.

Usage: python scripts/bench.py [--frames 120] [--width 854] [--height 480] [--method match]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import torch

import vidcolor
from vidcolor import io
from vidcolor.colorize import ColorizeOptions, Colorizer
from vidcolor.encode import EncodeOptions, VideoWriter
from vidcolor.pipeline import PipelineOptions
from vidcolor.temporal import TemporalFilter, TemporalOptions

ROOT = Path(__file__).resolve().parents[1]


def make_test_film(out: Path, n_frames: int, width: int, height: int) -> Path:
    """Scale the sample film to width x height (looping it if needed), keeping its sound."""
    sample = ROOT / "samples" / "film.mp4"
    with av.open(str(sample)) as src:
        gray = [f.reformat(width=width, height=height, format="rgb24").to_ndarray()
                for f in src.decode(video=0)]
    with av.open(str(sample)) as src, av.open(str(out), "w") as dst:
        rate = Fraction(src.streams.video[0].average_rate)
        video = dst.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = dst.add_stream_from_template(src.streams.audio[0])
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(gray[i % len(gray)], format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            dst.mux(video.encode(frame))
        dst.mux(video.encode(None))
        for packet in src.demux(src.streams.audio[0]):
            in_span = packet.pts is not None and packet.pts * packet.time_base < n_frames / rate
            if packet.size and in_span:
                packet.stream = audio
                dst.mux(packet)
    return out


def ms_per_frame(seconds: float, n: int) -> float:
    return 1000.0 * seconds / max(n, 1)


def time_stages(film: Path, ref: Path, method: str) -> dict[str, float]:
    start = time.perf_counter()
    frames = list(io.read_frames(film))
    decode_s = time.perf_counter() - start

    colorizer = Colorizer(vidcolor.load_model(method), io.load_still(ref),
                          ColorizeOptions(method=method))
    list(colorizer.run(frames[:4]))  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    colored = list(colorizer.run(frames))
    colorize_s = time.perf_counter() - start

    smoother = TemporalFilter(TemporalOptions())
    list(smoother.run(colored[:2]))
    smoother = TemporalFilter(TemporalOptions())
    start = time.perf_counter()
    smoothed = list(smoother.run(colored))
    temporal_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "enc.mp4", io.probe(film), audio_from=film,
                         opts=EncodeOptions()) as writer:
            for frame in smoothed:
                writer.write(frame)
        encode_s = time.perf_counter() - start
    n = len(frames)
    return {"decode": ms_per_frame(decode_s, n), "colorize": ms_per_frame(colorize_s, n),
            "temporal": ms_per_frame(temporal_s, n), "encode": ms_per_frame(encode_s, n)}


def time_end_to_end(film: Path, ref: Path, method: str) -> float:
    n = io.probe(film).n_frames
    opts = PipelineOptions(colorize=ColorizeOptions(method=method), overwrite=True)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        vidcolor.colorize_video(film, ref, Path(tmp) / "out.mp4", opts)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--method", default="match", choices=vidcolor.available_models())
    args = parser.parse_args()
    ref = ROOT / "samples" / "ref.jpg"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"vidcolor {vidcolor.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        film = make_test_film(Path(tmp) / "bench.mp4", args.frames, args.width, args.height)
        stages = time_stages(film, ref, args.method)
        fps = time_end_to_end(film, ref, args.method)
    print(f"{args.frames} frames at {args.width}x{args.height}, method {args.method}")
    print(f"{'stage':<12}{'ms/frame':>10}")
    for name, value in stages.items():
        print(f"{name:<12}{value:>10.1f}")
    print(f"{'sum':<12}{sum(stages.values()):>10.1f}")
    print(f"end-to-end: {fps:.2f} frames/s")


if __name__ == "__main__":
    main()
