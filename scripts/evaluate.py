"""Measure colourisation quality on real media; prints one table per run.

Subcommands (one function each):

  images DIR   SSCN-style self-augmentation on every photo in DIR (*.jpg, *.jpeg, *.png):
               the reference is the photo itself, geometrically distorted; vidcolor colourises
               the photo's luminance from it. Compared with two baselines that keep the same L:
               "grey" (a = b = 0) and "reinhard" (Reinhard et al. 2001 global Lab mean/std
               transfer; the target's ab is zero with zero spread, so ab becomes the
               reference's mean ab).

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

Usage: python scripts/evaluate.py images ../shared/data/eval/images [--limit N] [--side PX]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps
from skimage.metrics import structural_similarity

from vidcolor import frames
from vidcolor.colorize import ColorizeOptions, Colorizer
from vidcolor.weights import available_models, load_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FLIP_PROBABILITY = 0.5
TPS_GRID = 4  # control points per side
TPS_SHIFT = 0.04  # max control-point shift, fraction of the shorter side
ROTATION_DEG = 10.0  # max absolute rotation, degrees
CROP_MIN = 0.75  # smallest kept fraction of each side


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF orientation applied."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).copy()


def tps_warp(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random thin-plate-spline warp of (H, W, 3) uint8 RGB (see the module docstring)."""
    height, width = rgb.shape[:2]
    grid = np.linspace(0.0, 1.0, TPS_GRID)
    dst = np.stack(np.meshgrid(grid * (width - 1), grid * (height - 1)), -1).reshape(-1, 2)
    src = dst + rng.uniform(-TPS_SHIFT, TPS_SHIFT, dst.shape) * min(height, width)
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


def augment_reference(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, TPS warp, rotate and crop a photo into its own reference (module docstring)."""
    out = rgb[:, ::-1] if rng.random() < FLIP_PROBABILITY else rgb
    out = tps_warp(np.ascontiguousarray(out), rng)
    height, width = out.shape[:2]
    angle = rng.uniform(-ROTATION_DEG, ROTATION_DEG)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, 1.0)
    out = cv2.warpAffine(out, matrix, (width, height), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    crop_h = int(round(height * rng.uniform(CROP_MIN, 1.0)))
    crop_w = int(round(width * rng.uniform(CROP_MIN, 1.0)))
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
    opts = ColorizeOptions(method=args.method)
    if args.side:
        opts = dataclasses.replace(opts, work_side_px=args.side)
    if args.stride:
        opts = dataclasses.replace(opts, feature_stride_px=args.stride)
    model = load_model(args.method, device=args.device)
    scores: dict[str, list[tuple[float, float]]] = {"grey": [], "reinhard": [], "vidcolor": []}
    started = time.perf_counter()
    for path in paths:
        truth = load_rgb(path)
        rng = np.random.default_rng([args.seed, zlib.crc32(path.name.encode())])
        reference = augment_reference(truth, rng)
        outputs = {
            "grey": grey_baseline(truth),
            "reinhard": reinhard_baseline(truth, reference),
            "vidcolor": Colorizer(model, reference, opts).colorize_rgb([truth])[0],
        }
        for name, output in outputs.items():
            scores[name].append((psnr(output, truth), ssim(output, truth)))
        if args.verbose:
            print(f"{path.name:48s} " + " ".join(f"{scores[n][-1][0]:6.2f}" for n in scores))
    elapsed = time.perf_counter() - started
    print(f"{len(paths)} photos from {args.dir}, seed {args.seed}, {opts}, {elapsed:.0f} s")
    print(f"{'method':10s} {'PSNR dB':>8s} {'SSIM':>7s}")
    for name, values in scores.items():
        mean_psnr, mean_ssim = np.mean(values, axis=0)
        print(f"{name:10s} {mean_psnr:8.2f} {mean_ssim:7.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the subcommand and run it; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    images = sub.add_parser("images", help="self-augmentation PSNR/SSIM on a folder of photos")
    images.add_argument("dir", type=Path, help="folder of colour photos")
    images.add_argument("--limit", type=int, default=0, help="first N photos (sorted); 0 = all")
    images.add_argument("--method", default="match", choices=available_models())
    images.add_argument("--side", type=int, default=0, help="work_side_px; 0 = default")
    images.add_argument("--stride", type=int, default=0, help="feature_stride_px; 0 = default")
    images.add_argument("--seed", type=int, default=0, help="seed of the reference distortions")
    images.add_argument("--device", default=None, help="cpu, cuda; default: auto")
    images.add_argument("--verbose", "-v", action="store_true", help="one line per photo")
    images.set_defaults(func=cmd_images)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
