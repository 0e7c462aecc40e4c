"""Measure colourisation quality on real media; prints one table per run.

Subcommands (one function each):

  images DIR   SSCN-style self-augmentation on every photo in DIR (*.jpg, *.jpeg, *.png):
               the reference is the photo itself, geometrically distorted; vidcolor colourises
               the photo's luminance from it. Compared with two baselines that keep the same L:
               "grey" (a = b = 0) and "reinhard" (Reinhard et al. 2001 global Lab mean/std
               transfer; the target's ab is zero with zero spread, so ab becomes the
               reference's mean ab).
  images DIR --coverage    Also splits vidcolor's squared error (pooled over all pixels of all
               photos) between the pixels the distorted reference shows and those it does not
               (`reference_coverage`: the distortion applied to an image of pixel coordinates).
  images DIR --unrelated   The same, but each photo's reference is the next photo of DIR in
               sorted order (the last takes the first), undistorted: a wrong reference, so
               "vidcolor" should not score below "grey".
  videos DIR   Temporal consistency on every colour clip CLIP.mp4 in DIR that has its first
               frame CLIP_frame0.png beside it (see "Videos" below).

Reference distortion, drawn per photo from numpy's default_rng([seed, crc32(file name)]) so a
photo gets the same reference whatever --limit is, in this order:
  1. horizontal flip with probability 0.5;
  2. thin-plate-spline warp: a 4 x 4 grid of control points over the image, each moved by
     U(-4 %, 4 %) of the shorter side in x and y, border reflected;
  3. rotation about the centre by U(-10, 10) degrees, border reflected;
  4. crop of U(75 %, 100 %) of the width and, independently, of the height, at a random place.

Metrics, on RGB against the original photo (both (H, W, 3) uint8, cast to float64):
  PSNR = 10 log10(255^2 / MSE), MSE over all pixels and the three channels of one photo;
  SSIM = skimage.metrics.structural_similarity(channel_axis=2, data_range=255,
         gaussian_weights=True, sigma=1.5, use_sample_covariance=False) (Wang et al. 2004);
  each is averaged over photos (mean of per-photo values).

Videos, per clip:
  1. Grey copy: the clip's own luma plane (Y, bit for bit) with neutral chroma, lossless H.264
     (CRF 0) in the same container, every audio stream copied packet for packet, written to a
     temporary folder; it is deleted at the end.
  2. Per-frame colours, computed ONCE: `Colorizer.run` over `vidcolor.io.read_frames` of the
     grey copy, CLIP_frame0.png as the reference (the pipeline's own decode/colourise path).
  3. For each strength λ (always 0 and the default `TemporalOptions().strength`, plus
     --strengths): a fresh `TemporalFilter(TemporalOptions(strength=λ))` steps over those
     cached frames. λ = 0 returns the per-frame colours unchanged (= `--no-temporal`).
  4. Each result, the in-memory (H, W, 3) uint8 RGB frames (not re-encoded), is scored against
     the colour original decoded with `vidcolor.io.read_frames`, by
     `video_metrics.clip_metrics` (scripts/video_metrics.py; its docstring defines every
     number exactly): PSNR (dB, RGB in [0, 1], mean over frames), SSIM (RGB, 11x11 Gaussian
     window, sigma 1.5, mean over frames), E_warp (Lai et al. 2018: DIS flow on the original
     frames, Ruder et al. forward-backward and motion-boundary occlusion mask, mean squared
     difference between O_t and warped O_t+1) in RGB [0, 1] and in Lab a, b / 100 ("chroma"),
     and CDC (Jensen-Shannon divergence, log base 2, of 256-bin RGB histograms of frames t and
     t + d, d in {1, 2, 4}, averaged); all in float64.
  fps = frames / seconds of decoding the grey copy and colourising it plus the temporal stage
  at that λ; model loading, the grey copy, encoding and metrics are not counted. "ms/f" is the
  temporal stage alone, per frame. The machine may be shared: timings are indicative.
  Means are unweighted means of the per-clip values (fps: all frames / all those seconds);
  a change in % is 100 * (mean at λ - mean at 0) / mean at 0.
  --end-to-end also runs the real `vidcolor.colorize_video` on the grey copy, with default
  PipelineOptions (H.264 CRF 18, 4:2:0) at λ = 0 (= `--no-temporal`) and at the default λ,
  scores each decoded output the same way ("e2e" rows; fps = frames / wall time of the call,
  decode to encode, model already loaded), and gives the mean PSNR between it and the cached
  frames at the same λ. The two differ only in the encoder: lossy H.264, 4:2:0 chroma, and the
  input's own Y' plane written in place of the colour frame's Y' (for saturated colours Y'
  is not CIE L, so this moves lightness and chroma slightly). That agreement is the check that
  the cached path is the pipeline's; the e2e rows are what a user of the CLI gets.

Usage: python scripts/evaluate.py images ../shared/data/eval/images [--limit N] [--side PX]
       python scripts/evaluate.py videos ../shared/data/eval/videos [--strengths 0,0.3,0.6,0.8,1.0]
                                  [--end-to-end] [--verbose]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import video_metrics
from PIL import Image, ImageOps
from skimage.metrics import structural_similarity
from torch import nn

from vidcolor import frames
from vidcolor.colorize import ColorizeOptions, Colorizer
from vidcolor.encode import EncodeOptions, VideoWriter
from vidcolor.errors import VidcolorError
from vidcolor.frames import Frame
from vidcolor.io import load_still, probe, read_frames
from vidcolor.pipeline import PipelineOptions, colorize_video
from vidcolor.temporal import TemporalFilter, TemporalOptions
from vidcolor.weights import available_models, load_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FLIP_PROBABILITY = 0.5
TPS_GRID = 4  # control points per side
TPS_SHIFT = 0.04  # max control-point shift, fraction of the shorter side
ROTATION_DEG = 10.0  # max absolute rotation, degrees
CROP_MIN = 0.75  # smallest kept fraction of each side
COVERAGE_SLACK_PX = 2  # `reference_coverage`: a pixel this close to a shown one counts as shown
REFERENCE_SUFFIX = "_frame0.png"  # CLIP.mp4's first frame, in colour: CLIP_frame0.png
GREY_COPY_ENCODING = EncodeOptions(crf=0, preset="ultrafast")  # lossless H.264: Y kept exactly
METHOD_HELP = (f"colouriser: {', '.join(available_models())}, or the path of a checkpoint "
               "(scripts/train.py --out), to measure a candidate before shipping it")
VIDEO_HEADER = (  # columns of the videos table
    f"{'clip':30s} {'path':>6s} {'λ':>5s} {'PSNR dB':>8s} {'SSIM':>7s} {'Ewarp RGB':>10s} "
    f"{'Ewarp ab':>10s} {'CDC':>10s} {'fps':>6s} {'ms/f':>6s}")


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()


def tps_warp(rgb: np.ndarray, rng: np.random.Generator, shift: float = TPS_SHIFT) -> np.ndarray:
    """Random thin-plate-spline warp of (H, W, 3) uint8 RGB (see the module docstring)."""
    height, width = rgb.shape[:2]
    grid = np.linspace(0.0, 1.0, TPS_GRID)
    dst = np.stack(np.meshgrid(grid * (width - 1), grid * (height - 1)), -1).reshape(-1, 2)
    src = dst + rng.uniform(-shift, shift, dst.shape) * min(height, width)
    # Solve the TPS interpolating dst -> src, then evaluate it at every output pixel.
    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        r2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.where(r2 > 0, r2 * np.log(np.maximum(r2, 1e-12)), 0.0)

    n = len(dst)
    affine = np.hstack([np.ones((n, 1)), dst])
    system = np.zeros((n + 3, n + 3))
    system[:n, :n], system[:n, n:], system[n:, :n] = kernel(dst, dst), affine, affine.T
    coef = np.linalg.solve(system, np.vstack([src, np.zeros((3, 2))]))
    ys, xs = np.mgrid[0:height, 0:width]
    points = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64)
    affine_points = np.hstack([np.ones((len(points), 1)), points])
    mapped = kernel(points, dst) @ coef[:n] + affine_points @ coef[n:]
    map_xy = mapped.reshape(height, width, 2).astype(np.float32)
    return cv2.remap(rgb, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, cv2.BORDER_REFLECT_101)


def augment_reference(rgb: np.ndarray, rng: np.random.Generator,
                      strength: float = 1.0) -> np.ndarray:
    """Flip, TPS warp, rotate and crop a photo into its own reference (module docstring).

    `strength` scales the TPS shift, the rotation and the cropped-away share (training uses
    more than 1 for pairs that are related but less aligned; the protocol is 1).
    """
    out = rgb[:, ::-1] if rng.random() < FLIP_PROBABILITY else rgb
    out = tps_warp(np.ascontiguousarray(out), rng, TPS_SHIFT * strength)
    height, width = out.shape[:2]
    angle = rng.uniform(-ROTATION_DEG * strength, ROTATION_DEG * strength)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    out = cv2.warpAffine(out, matrix, (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    crop_min = max(0.3, 1.0 - (1.0 - CROP_MIN) * strength)
    crop_h = int(round(height * rng.uniform(crop_min, 1.0)))
    crop_w = int(round(width * rng.uniform(crop_min, 1.0)))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return np.ascontiguousarray(out[top : top + crop_h, left : left + crop_w])


def grey_baseline(target_rgb: np.ndarray) -> np.ndarray:
    """The target's own L with a = b = 0, as (H, W, 3) uint8 RGB."""
    return frames.replace_ab(target_rgb, np.zeros((*target_rgb.shape[:2], 2), np.float32))


def reinhard_baseline(target_rgb: np.ndarray, reference_rgb: np.ndarray) -> np.ndarray:
    """Global Lab mean/std transfer (Reinhard et al. 2001) onto a grey target, L kept.

    The grey target has ab = 0 everywhere (zero spread), so the transferred ab is the
    reference's mean ab at every pixel.
    """
    mean_ab = frames.rgb_to_lab(reference_rgb)[..., 1:].reshape(-1, 2).mean(0)
    return frames.replace_ab(target_rgb, np.broadcast_to(mean_ab, (*target_rgb.shape[:2], 2)))


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two (H, W, 3) uint8 images, float64 maths, peak 255."""
    mse = np.mean((output.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def ssim(output: np.ndarray, truth: np.ndarray) -> float:
    """Mean SSIM of two (H, W, 3) uint8 RGB images (Wang et al. settings, float64)."""
    return float(
        structural_similarity(
            output.astype(np.float64), truth.astype(np.float64), channel_axis=2,
            data_range=255.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
    )


def load_colouriser(args: argparse.Namespace) -> tuple[nn.Module, ColorizeOptions]:
    """The model and the ColorizeOptions that --method, --device, --side (and images'
    --stride) ask for; the options take the model's own method (a checkpoint path's kind)."""
    model = load_model(args.method, device=args.device)
    opts = ColorizeOptions(method=model.config.kind)
    if args.side:
        opts = dataclasses.replace(opts, work_side_px=args.side)
    if getattr(args, "stride", 0):
        opts = dataclasses.replace(opts, feature_stride_px=args.stride)
    return model, opts


def photo_pair(paths: list[Path], index: int, unrelated: bool, seed: int = 0,
               strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(photo, reference) uint8 RGB of the protocol: the photo's own copy distorted by
    `augment_reference` (drawn from default_rng([seed, crc32(file name)])), or with
    `unrelated` the next photo (sorted, wrapping): colours that do not fit.

    Raises:
        OSError: a photo cannot be read.
    """
    truth = load_rgb(paths[index])
    if unrelated:
        return truth, load_rgb(paths[(index + 1) % len(paths)])
    return truth, augment_reference(truth, reference_rng(paths[index], seed), strength)


def reference_rng(path: Path, seed: int) -> np.random.Generator:
    """The generator of a photo's reference distortion: its draws depend on the seed and the
    file name only, so a photo gets the same reference whatever else is measured."""
    return np.random.default_rng([seed, zlib.crc32(path.name.encode())])


def reference_coverage(path: Path, shape: tuple[int, int], seed: int = 0,
                       strength: float = 1.0) -> np.ndarray:
    """(H, W) bool: the pixels of the photo at `path` that its distorted reference
    (`photo_pair`) shows, within COVERAGE_SLACK_PX. The same distortion is drawn and applied
    to an image of pixel coordinates; where those land is what the reference holds (reflected
    borders count: they show the photo too). Why: colours the reference does not show can only
    be guessed, so `images --coverage` splits the error between the two."""
    height, width = shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    coordinates = np.dstack([cols, rows, np.zeros_like(rows)])
    landed = augment_reference(coordinates, reference_rng(path, seed), strength)
    covered = np.zeros(shape, np.uint8)
    covered[np.clip(np.rint(landed[..., 1]).astype(int), 0, height - 1),
            np.clip(np.rint(landed[..., 0]).astype(int), 0, width - 1)] = 1
    slack = 2 * COVERAGE_SLACK_PX + 1
    return cv2.dilate(covered, np.ones((slack, slack), np.uint8)).astype(bool)


def cmd_images(args: argparse.Namespace) -> int:
    """`images DIR`: self-augmentation PSNR/SSIM table of grey, Reinhard and vidcolor."""
    if not args.dir.is_dir():
        print(f"evaluate.py images: '{args.dir}' is not a directory", file=sys.stderr)
        return 1
    paths = sorted(p for p in args.dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    paths = paths[: args.limit] if args.limit else paths
    if not paths:
        print(f"evaluate.py images: no .jpg/.jpeg/.png photos in '{args.dir}'", file=sys.stderr)
        return 1
    if args.coverage and args.unrelated:
        print("evaluate.py images: --coverage splits the error of self-augmented references; "
              "drop --unrelated", file=sys.stderr)
        return 1
    model, opts = load_colouriser(args)
    scores: dict[str, list[tuple[float, float]]] = {"grey": [], "reinhard": [], "vidcolor": []}
    # vidcolor's squared error summed over, and number of, pixels (channels averaged) that the
    # reference does not show, and that it shows
    coverage = np.zeros((2, 2))
    skipped = 0
    started = time.perf_counter()
    for index, path in enumerate(paths):
        try:
            truth, reference = photo_pair(paths, index, args.unrelated, args.seed, args.strength)
            colorized = Colorizer(model, reference, opts).colorize_rgb([truth])[0]
        except (OSError, VidcolorError) as e:  # unreadable, or grey: nothing to measure
            print(f"skipped {path.name}: {e}", file=sys.stderr)
            skipped += 1
            continue
        outputs = {
            "grey": grey_baseline(truth),
            "reinhard": reinhard_baseline(truth, reference),
            "vidcolor": colorized,
        }
        for name, output in outputs.items():
            scores[name].append((psnr(output, truth), ssim(output, truth)))
        if args.coverage:
            shown = reference_coverage(path, truth.shape[:2], args.seed, args.strength)
            error = ((colorized.astype(np.float64) - truth) ** 2).mean(2)
            for row, mask in enumerate((~shown, shown)):
                coverage[row] += (error[mask].sum(), mask.sum())
        if args.verbose:
            print(f"{path.name:48s} " + " ".join(f"{scores[n][-1][0]:7.3f}" for n in scores))
    if not scores["vidcolor"]:
        print(f"evaluate.py images: no usable colour photo in '{args.dir}'", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    n_used = len(scores["vidcolor"])
    protocol = ("unrelated references (next photo)" if args.unrelated
                else f"seed {args.seed}, distortion x{args.strength:g}")
    print(f"{n_used} photos from {args.dir} ({skipped} skipped), {protocol}, {elapsed:.0f} s")
    print(f"{opts}")
    print(f"{'method':10s} {'PSNR dB':>8s} {'SSIM':>7s}")
    for name, values in scores.items():
        mean_psnr, mean_ssim = np.mean(values, axis=0)
        print(f"{name:10s} {mean_psnr:8.3f} {mean_ssim:7.4f}")  # gains of 0.01 dB are compared
    if args.coverage:
        (unseen_error, unseen), (seen_error, seen) = coverage
        print(f"vidcolor, pixels the reference does not show: {100 * unseen / (unseen + seen):.1f}"
              f" % of the pixels, {100 * unseen_error / (unseen_error + seen_error):.1f} % of the "
              f"squared error (MSE {unseen_error / max(unseen, 1):.2f} there, "
              f"{seen_error / max(seen, 1):.2f} where it shows them)")
    return 0


def parse_strengths(text: str) -> list[float]:
    """'0,0.3,1' -> [0.0, 0.3, 1.0], each a valid TemporalOptions.strength (argparse type)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
        for value in values:
            TemporalOptions(strength=value)
    except ValueError as e:  # OptionsError is a ValueError too
        raise argparse.ArgumentTypeError(f"want comma-separated numbers in [0, 1]: {e}") from e
    return values


def find_clips(folder: Path) -> list[tuple[Path, Path]]:
    """(CLIP.mp4, CLIP_frame0.png) pairs in `folder`, sorted by name.

    Raises:
        FileNotFoundError: a clip has no first-frame still beside it.
    """
    pairs = []
    for clip in sorted(folder.glob("*.mp4")):
        reference = clip.with_name(clip.stem + REFERENCE_SUFFIX)
        if not reference.is_file():
            raise FileNotFoundError(f"'{clip}' has no '{reference.name}' beside it; "
                                    f"put its first frame there as a colour png")
        pairs.append((clip, reference))
    return pairs


def write_grey_copy(clip: Path, out: Path) -> Path:
    """Write the luminance-only copy of a colour clip (module docstring, Videos 1).

    The encoder keeps each frame's own decoded luma plane, so the R = G = B colour handed to
    it only sets neutral chroma.
    """
    with VideoWriter(out, probe(clip), audio_from=clip, opts=GREY_COPY_ENCODING) as writer:
        for frame in read_frames(clip):
            grey = cv2.cvtColor(frame.source, cv2.COLOR_RGB2GRAY)
            writer.write(frame.with_color(cv2.merge([grey, grey, grey])))
    return out


def colorize_per_frame(grey: Path, reference: Path, model,
                       opts: ColorizeOptions) -> tuple[list[Frame], float]:
    """Decode and colourise the grey copy once, in memory, as the pipeline does.

    Returns:
        The Frames with `color` set ((H, W, 3) uint8 RGB) and the seconds it took (the
        reference is encoded before the clock starts).
    """
    colorizer = Colorizer(model, load_still(reference, role="reference"), opts)
    started = time.perf_counter()
    cached = list(colorizer.run(read_frames(grey)))
    return cached, time.perf_counter() - started


def smooth(cached: list[Frame], strength: float) -> tuple[list[np.ndarray], float]:
    """A fresh temporal stage at `strength` over cached per-frame results.

    Returns:
        The (H, W, 3) uint8 RGB output colours and the seconds the stage took.
    """
    smoother = TemporalFilter(TemporalOptions(strength=strength))
    started = time.perf_counter()
    colors = [smoother.step(frame).color for frame in cached]
    return colors, time.perf_counter() - started


def score_clip(clip: Path, colors: list[np.ndarray]) -> dict:
    """`video_metrics.clip_metrics` of (H, W, 3) uint8 RGB frames against the colour `clip`."""
    return video_metrics.clip_metrics((frame.source for frame in read_frames(clip)), colors)


def run_end_to_end(grey: Path, reference: Path, clip: Path, out: Path, model,
                   opts: ColorizeOptions, strength: float, expected: list[np.ndarray]) -> dict:
    """Score `colorize_video` on the grey copy: default PipelineOptions but λ = `strength`.

    Args:
        expected: the cached path's (H, W, 3) uint8 RGB frames at the same strength.

    Returns:
        `clip_metrics` of the decoded output, its fps, and "agree_db": the mean per-frame
        PSNR between the decoded output and `expected`.
    """
    pipeline_opts = PipelineOptions(colorize=opts, temporal=TemporalOptions(strength=strength))
    started = time.perf_counter()
    colorize_video(grey, reference, out, pipeline_opts, model=model)
    seconds = time.perf_counter() - started
    decoded = [frame.source for frame in read_frames(out)]
    agree = [video_metrics.psnr(a, b) for a, b in zip(decoded, expected, strict=True)]
    return {**score_clip(clip, decoded), "fps": len(decoded) / seconds,
            "ms_per_frame": float("nan"), "agree_db": float(np.mean(agree))}


def evaluate_clip(clip: Path, reference: Path, workdir: Path, model, opts: ColorizeOptions,
                  strengths: list[float], end_to_end: bool) -> tuple[dict[float, dict],
                                                                       dict[float, dict]]:
    """Scores of one clip at each strength, and of the end-to-end runs if asked for.

    Returns:
        ({λ: clip_metrics + "fps" + "ms_per_frame"} of the cached path,
         {λ: `run_end_to_end` scores} for λ = 0 and the default, or {}).
    """
    grey = write_grey_copy(clip, workdir / f"{clip.stem}_grey{clip.suffix}")
    cached, colorize_s = colorize_per_frame(grey, reference, model, opts)
    by_strength, expected = {}, {}
    for strength in strengths:
        colors, temporal_s = smooth(cached, strength)
        by_strength[strength] = {**score_clip(clip, colors),
                                 "fps": len(colors) / (colorize_s + temporal_s),
                                 "ms_per_frame": 1000.0 * temporal_s / len(colors)}
        if end_to_end and strength in (0.0, TemporalOptions().strength):
            expected[strength] = colors
    del cached
    e2e = {}
    for strength, colors in expected.items():
        out = workdir / f"{clip.stem}_color{strength}{clip.suffix}"
        e2e[strength] = run_end_to_end(grey, reference, clip, out, model, opts, strength, colors)
        out.unlink()
    return by_strength, e2e


def format_row(name: str, path: str, strength: float, scores: dict) -> str:
    """One line of the videos table (columns as VIDEO_HEADER)."""
    return (f"{name:30s} {path:>6s} {strength:5.2f} {scores['psnr']:8.3f} {scores['ssim']:7.4f} "
            f"{scores['ewarp_rgb']:10.3e} {scores['ewarp_ab']:10.3e} {scores['cdc']:10.3e} "
            f"{scores['fps']:6.1f} {scores['ms_per_frame']:6.1f}")


def mean_scores(per_clip: list[dict]) -> dict:
    """Unweighted mean over clips of each metric; fps and ms/f over all frames together."""
    mean = {key: float(np.mean([s[key] for s in per_clip]))
            for key in ("psnr", "ssim", "ewarp_rgb", "ewarp_ab", "cdc")}
    total = sum(s["frames"] for s in per_clip)
    mean["frames"] = total
    mean["fps"] = total / sum(s["frames"] / s["fps"] for s in per_clip)
    mean["ms_per_frame"] = sum(s["ms_per_frame"] * s["frames"] for s in per_clip) / total
    return mean


def describe_change(base: dict, other: dict) -> str:
    """How the mean metrics move from `base` to `other` (E_warp and CDC in % of base)."""
    def pct(key: str) -> float:
        return 100.0 * (other[key] - base[key]) / base[key]

    return (f"chroma E_warp {pct('ewarp_ab'):+.1f} %, RGB E_warp {pct('ewarp_rgb'):+.1f} %, "
            f"CDC {pct('cdc'):+.1f} %, PSNR {other['psnr'] - base['psnr']:+.3f} dB, "
            f"SSIM {other['ssim'] - base['ssim']:+.4f}")


def print_video_summary(results: dict[float, list[dict]], e2e: dict[float, list[dict]]) -> None:
    """Mean rows, temporal vs per-frame, the λ curve and the end-to-end check."""
    default = TemporalOptions().strength
    means = {strength: mean_scores(scores) for strength, scores in results.items()}
    n_clips = len(results[0.0])
    print(f"\nmean over {n_clips} clips ({means[0.0]['frames']} frames)")
    for strength in (0.0, default):
        print(format_row("mean", "cached", strength, means[strength]))
    e2e_means = {strength: mean_scores(scores) for strength, scores in e2e.items()}
    for strength, mean in e2e_means.items():
        print(format_row("mean", "e2e", strength, mean))
    print(f"temporal (λ={default:.2f}) vs per-frame (λ=0), cached: "
          f"{describe_change(means[0.0], means[default])}")
    if e2e_means:
        print(f"temporal (λ={default:.2f}) vs per-frame (λ=0), end to end: "
              f"{describe_change(e2e_means[0.0], e2e_means[default])}")
        for strength, mean in e2e_means.items():
            agree = np.mean([s["agree_db"] for s in e2e[strength]])
            print(f"end to end vs cached at λ={strength:.2f}: "
                  f"{describe_change(means[strength], mean)}; frames agree to {agree:.2f} dB")
    if len(means) > 2:
        print(f"\nλ curve (cached, mean over {n_clips} clips; change vs λ=0)")
        print(VIDEO_HEADER)
        for strength, mean in means.items():
            print(format_row("mean", "cached", strength, mean))
        for strength, mean in means.items():
            if strength:
                print(f"λ={strength:.2f}: {describe_change(means[0.0], mean)}")


def cmd_videos(args: argparse.Namespace) -> int:
    """`videos DIR`: per-frame vs temporal colourisation of grey copies of colour clips."""
    if not args.dir.is_dir():
        print(f"evaluate.py videos: '{args.dir}' is not a directory", file=sys.stderr)
        return 1
    try:
        clips = find_clips(args.dir)
    except FileNotFoundError as e:
        print(f"evaluate.py videos: {e}", file=sys.stderr)
        return 1
    if not clips:
        print(f"evaluate.py videos: no CLIP.mp4 with CLIP{REFERENCE_SUFFIX} beside it in "
              f"'{args.dir}'", file=sys.stderr)
        return 1
    default = TemporalOptions().strength
    strengths = sorted({0.0, default, *args.strengths})
    model, opts = load_colouriser(args)
    print(f"{len(clips)} clips from {args.dir}, λ in {strengths} (default {default}), {opts}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(VIDEO_HEADER, flush=True)
    results: dict[float, list[dict]] = {strength: [] for strength in strengths}
    e2e: dict[float, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vidcolor-eval-") as workdir:
        for clip, reference in clips:
            by_strength, clip_e2e = evaluate_clip(clip, reference, Path(workdir), model, opts,
                                                  strengths, args.end_to_end)
            for strength, scores in by_strength.items():
                results[strength].append(scores)
                if args.verbose or strength in (0.0, default):
                    print(format_row(clip.stem, "cached", strength, scores))
            for strength, scores in clip_e2e.items():
                e2e.setdefault(strength, []).append(scores)
                print(format_row(clip.stem, "e2e", strength, scores) +
                      f"  agrees with cached to {scores['agree_db']:.2f} dB")
            sys.stdout.flush()
    print_video_summary(results, e2e)
    print(f"load average at the end {os.getloadavg()[0]:.1f} (fps are indicative)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    colouriser = argparse.ArgumentParser(add_help=False)  # what both subcommands colourise with
    colouriser.add_argument("--method", default=ColorizeOptions.method, help=METHOD_HELP)
    colouriser.add_argument("--side", type=int, default=0, help="work_side_px; 0 = default")
    colouriser.add_argument("--device", default=None, help="cpu, cuda; default: auto")
    images = sub.add_parser("images", parents=[colouriser],
                            help="self-augmentation PSNR/SSIM on a folder of photos")
    images.add_argument("dir", type=Path, help="folder of colour photos")
    images.add_argument("--limit", type=int, default=0, help="first N photos (sorted); 0 = all")
    images.add_argument("--stride", type=int, default=0, help="feature_stride_px; 0 = default")
    images.add_argument("--seed", type=int, default=0, help="seed of the reference distortions")
    images.add_argument("--strength", type=float, default=1.0, help="scale of the distortions "
                        "(TPS shift, rotation, cropped share); the protocol is 1")
    images.add_argument("--unrelated", action="store_true",
                        help="reference = the next photo in sorted order (wrapping), not a "
                             "distorted copy: checks that wrong colours do not beat grey")
    images.add_argument("--coverage", action="store_true", help="also split vidcolor's "
                        "squared error between the pixels the distorted reference shows and "
                        "those it does not (cropped away): those can only be guessed")
    images.add_argument("--verbose", "-v", action="store_true", help="one line per photo")
    images.set_defaults(func=cmd_images)
    videos = sub.add_parser("videos", parents=[colouriser],
                            help="temporal consistency on a folder of colour clips")
    videos.add_argument("dir", type=Path, help="folder of CLIP.mp4, each with CLIP_frame0.png")
    videos.add_argument("--strengths", type=parse_strengths, default=[],
                        help="λ values for the trade-off curve, e.g. 0,0.3,0.6,0.8,1.0 "
                             "(0 and the default are always run)")
    videos.add_argument("--end-to-end", action="store_true",
                        help="also run colorize_video (default settings, λ 0 and default)")
    videos.add_argument("--verbose", "-v", action="store_true", help="per-clip rows at every λ")
    videos.set_defaults(func=cmd_videos)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except VidcolorError as e:  # bad options, missing weights: one line, no traceback
        print(f"evaluate.py {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
