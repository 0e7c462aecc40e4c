"""Speed benchmark: per-stage ms/frame, end-to-end frames/s against the PyAV floor, and memory.

For each size (default 480p, 720p, 1080p) it builds a test film by scaling the bundled sample
(samples/film.mp4, real footage with sound) and, for each speed preset:
  - times each stage alone on the same frames (decode, colorize, temporal, encode), wall-clock
    ms per frame after a warm-up;
  - times the whole `colorize_video` run (stages overlapping in threads; model loaded before);
  - times a plain PyAV decode -> RGB -> encode of the same film with the preset's x264 settings,
    the floor of this pipeline, and prints end-to-end / floor.
Then, unless --memory is empty, peak RSS (VmHWM of a fresh subprocess running
`colorize_video` on a synthetic film: moving bars, no sound) for each length in minutes, with
seconds per frame, so that flat memory and linear time can be read off.
The machine's load average is printed first and last: on a shared machine the times are noisy.
With --compare A,B,... it only times the colorize stage of each model (a name or a checkpoint
file) in turn, round after round in one process, and prints each one's median and its ratio
to the first: a shared machine's speed drifts by up to 2x within minutes, and models timed in
turn on the same frames give a ratio that the drift cannot fake.

Usage: python scripts/bench.py [--frames 120] [--sizes 480p,720p,1080p]
                               [--presets fast,balanced,best] [--memory 1,10]
                               [--memory-size 1080p] [--memory-fps 24] [--method match]
       python scripts/bench.py --compare net,runs/x/ft.pt [--rounds 5] [--frames 48]
                               [--sizes 480p] [--presets balanced]
"""

from __future__ import annotations

# vidcolor first: it sets OpenMP's wait policy, which only takes effect before torch loads.
import vidcolor  # isort: skip

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from vidcolor import io
from vidcolor.colorize import Colorizer
from vidcolor.encode import VideoWriter
from vidcolor.errors import VidcolorError
from vidcolor.pipeline import PRESETS, PipelineOptions, preset_options
from vidcolor.temporal import TemporalFilter

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


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


def make_synthetic_film(out: Path, n_frames: int, width: int, height: int, fps: int) -> Path:
    """Moving grey bars and a slow fade, no sound: a long film that costs little to make."""
    x = np.arange(width, dtype=np.int32)[None, :]
    y = np.arange(height, dtype=np.int32)[:, None]
    with av.open(str(out), "w") as dst:
        video = dst.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        for i in range(n_frames):
            luma = (((x + 4 * i) // 40 + y // 60) % 2 * 120 + 60 + (i % 200) // 4).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(luma[..., None], 3, axis=2),
                                               format="rgb24")
            frame.pts = i
            dst.mux(video.encode(frame))
        dst.mux(video.encode(None))
    return out


def ms_per_frame(seconds: float, n: int) -> float:
    return 1000.0 * seconds / max(n, 1)


def time_stages(film: Path, ref: Path, opts: PipelineOptions, model) -> dict[str, float]:
    """Each stage alone, in this thread, on the same frames: ms per frame."""
    start = time.perf_counter()
    frames = list(io.read_frames(film))
    decode_s = time.perf_counter() - start

    colorizer = Colorizer(model, io.load_still(ref), opts.colorize)
    list(colorizer.run(frames[:4]))  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    colored = list(colorizer.run(frames))
    colorize_s = time.perf_counter() - start

    list(TemporalFilter(opts.temporal).run(colored[:2]))
    smoother = TemporalFilter(opts.temporal)
    start = time.perf_counter()
    smoothed = list(smoother.run(colored))
    temporal_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with VideoWriter(Path(tmp) / "enc.mp4", io.probe(film), audio_from=film,
                         opts=opts.encode) as writer:
            for frame in smoothed:
                writer.write(frame)
        encode_s = time.perf_counter() - start
    n = len(frames)
    return {"decode": ms_per_frame(decode_s, n), "colorize": ms_per_frame(colorize_s, n),
            "temporal": ms_per_frame(temporal_s, n), "encode": ms_per_frame(encode_s, n)}


def time_end_to_end(film: Path, ref: Path, opts: PipelineOptions, model) -> tuple[float, float]:
    """The whole `colorize_video` run: (frames/s, minor page faults per frame)."""
    n = io.probe(film).n_frames
    with tempfile.TemporaryDirectory() as tmp:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        vidcolor.colorize_video(film, ref, Path(tmp) / "out.mp4", opts, model=model)
        seconds = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return n / seconds, faults / n


def time_floor(film: Path, opts: PipelineOptions) -> float:
    """Plain PyAV decode -> RGB -> x264 encode of `film`, the preset's x264 settings: frames/s."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with av.open(str(film)) as src, av.open(str(Path(tmp) / "floor.mp4"), "w") as dst:
            src.streams.video[0].thread_type = "AUTO"
            rate = src.streams.video[0].average_rate
            video = dst.add_stream("libx264", rate=rate, options={
                "crf": str(opts.encode.crf), "preset": opts.encode.preset})
            video.width, video.height = src.streams.video[0].width, src.streams.video[0].height
            video.pix_fmt, n = "yuv420p", 0
            for frame in src.decode(video=0):
                rgb = frame.to_ndarray(format="rgb24")
                out = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                out.pts, out.time_base = frame.pts, frame.time_base
                dst.mux(video.encode(out))
                n += 1
            dst.mux(video.encode(None))
        return n / (time.perf_counter() - start)


def peak_rss(film: Path, ref: Path, preset: str, method: str) -> dict[str, float]:
    """Run `colorize_video` in a fresh process; its peak RSS (MiB) and seconds per frame."""
    out = film.with_suffix(".color.mp4")
    command = [sys.executable, __file__, "--rss-child", str(film), str(ref), str(out), preset,
               method]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    out.unlink(missing_ok=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def rss_child(film: str, ref: str, out: str, preset: str, method: str) -> None:
    """The subprocess side of `peak_rss`: prints one JSON line."""
    opts = preset_options(preset, method, overwrite=True)
    n = io.probe(Path(film)).n_frames
    start = time.perf_counter()
    vidcolor.colorize_video(Path(film), Path(ref), Path(out), opts)
    seconds = time.perf_counter() - start
    print(json.dumps({"frames": n, "peak_rss_mib": peak_rss_mib(), "s_per_frame": seconds / n}))


def peak_rss_mib() -> float:
    """This process's peak resident set, MiB: VmHWM, else ru_maxrss.

    Linux carries ru_maxrss across exec, so a child started from this (large) benchmark
    process would report at least the parent's size; VmHWM belongs to the child's own memory.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def bench_size(label: str, args, ref: Path, model) -> None:
    width, height = SIZES[label]
    with tempfile.TemporaryDirectory() as tmp:
        film = make_test_film(Path(tmp) / "bench.mp4", args.frames, width, height)
        print(f"\n{label}: {args.frames} frames at {width}x{height}, method {args.method}; "
              f"{load_line()}")
        print(f"{'preset':<10}{'decode':>8}{'colorize':>10}{'temporal':>10}{'encode':>8}"
              f"{'sum':>8}  {'e2e fps':>8}{'floor fps':>10}{'e2e/floor':>10}{'faults/fr':>10}")
        for preset in args.presets:
            opts = preset_options(preset, args.method, overwrite=True)
            stages = time_stages(film, ref, opts, model)
            fps, faults = time_end_to_end(film, ref, opts, model)
            floor = time_floor(film, opts)
            print(f"{preset:<10}{stages['decode']:>8.1f}{stages['colorize']:>10.1f}"
                  f"{stages['temporal']:>10.1f}{stages['encode']:>8.1f}"
                  f"{sum(stages.values()):>8.1f}  {fps:>8.2f}{floor:>10.1f}{fps / floor:>10.3f}"
                  f"{faults:>10.0f}", flush=True)


def bench_memory(args, ref: Path) -> None:
    width, height = SIZES[args.memory_size]
    print(f"\nmemory: synthetic {args.memory_size} films at {args.memory_fps} fps, preset "
          f"{args.memory_preset}, each run in a fresh process; {load_line()}")
    print(f"{'minutes':>8}{'frames':>8}{'peak RSS MiB':>14}{'s/frame':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in args.memory:
            n = max(2, round(minutes * 60 * args.memory_fps))
            film = make_synthetic_film(Path(tmp) / f"long_{minutes}.mp4", n, width, height,
                                       args.memory_fps)
            result = peak_rss(film, ref, args.memory_preset, args.method)
            print(f"{minutes:>8g}{result['frames']:>8d}{result['peak_rss_mib']:>14.0f}"
                  f"{result['s_per_frame']:>10.4f}", flush=True)
            film.unlink()


def compare_colorize(args, ref: Path) -> None:
    """The colorize stage alone, for each model of --compare in turn, --rounds times."""
    models = {name: vidcolor.load_model(name) for name in args.compare}
    reference = io.load_still(ref)
    for label in args.sizes:
        width, height = SIZES[label]
        with tempfile.TemporaryDirectory() as tmp:
            frames = list(io.read_frames(make_test_film(Path(tmp) / "bench.mp4", args.frames,
                                                        width, height)))
        for preset in args.presets:
            colorizers = {}
            for name, model in models.items():
                opts = preset_options(preset, model.config.kind).colorize
                colorizers[name] = Colorizer(model, reference, opts)
                list(colorizers[name].run(frames[:4]))  # warm-up
            times = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, colorizer in colorizers.items():
                    start = time.perf_counter()
                    list(colorizer.run(frames))
                    times[name].append(ms_per_frame(time.perf_counter() - start, len(frames)))
            print(f"\n{label} {preset}: colorize ms/frame over {args.rounds} rounds of "
                  f"{len(frames)} frames; {load_line()}")
            print(f"{'model':<40}{'median':>8}{'min':>8}{'max':>8}{'median/first':>14}")
            first = float(np.median(times[args.compare[0]]))
            for name, ms in times.items():
                print(f"{name:<40}{np.median(ms):>8.1f}{min(ms):>8.1f}{max(ms):>8.1f}"
                      f"{np.median(ms) / first:>14.3f}", flush=True)


def parse_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "--rss-child":
        rss_child(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=120, help="frames per speed test film")
    parser.add_argument("--sizes", type=parse_list, default=list(SIZES),
                        help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--presets", type=parse_list, default=list(PRESETS),
                        help=f"comma list of {', '.join(PRESETS)}")
    parser.add_argument("--memory", type=lambda s: [float(m) for m in parse_list(s)],
                        default=[1.0, 10.0], help="film lengths in minutes; empty to skip")
    parser.add_argument("--memory-size", default="1080p", choices=list(SIZES))
    parser.add_argument("--memory-fps", type=int, default=24, help="frame rate of those films")
    parser.add_argument("--memory-preset", default="balanced", choices=list(PRESETS))
    parser.add_argument("--method", default="match", choices=vidcolor.available_models())
    parser.add_argument("--compare", type=parse_list, default=[],
                        help="comma list of model names or checkpoint files: time only their "
                             "colorize stage, in turn")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare")
    args = parser.parse_args()
    ref = ROOT / "samples" / "ref.jpg"
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), vidcolor "
          f"{vidcolor.__version__}; process tuning {vidcolor.runtime.PROCESS_TUNING}; "
          f"{load_line()}")
    if args.compare:
        try:
            compare_colorize(args, ref)
        except VidcolorError as e:  # a --compare entry that is no model: one line, no traceback
            print(f"bench.py --compare: {e}", file=sys.stderr)
            return 1
        print(f"\nend: {load_line()}")
        return 0
    model = vidcolor.load_model(args.method)
    for label in args.sizes:
        bench_size(label, args, ref, model)
    if args.memory:
        bench_memory(args, ref)
    print(f"\nend: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
