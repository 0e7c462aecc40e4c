"""Video quality metrics for colourised clips: PSNR, SSIM, E_warp (RGB and chroma) and CDC.

Plain functions over (H, W, 3) uint8 RGB frames, used by `scripts/evaluate.py videos`. Every
number is computed in float64 (only optical flow, which OpenCV computes in float32, and the Lab
conversion of `vidcolor.frames.rgb_to_lab`, float32 with errors far below 1e-3 ab units, are
not). Exactly how, so that numbers can be compared across tools:

- PSNR: per frame 10 * log10(1 / MSE), MSE over all pixels and the three RGB channels scaled
  to [0, 1]; the clip's PSNR is the mean of the per-frame values (inf-free: MSE floored at
  1e-10).
- SSIM: Wang et al. 2004 on each RGB channel in [0, 1] with an 11x11 Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, 'valid' border (the 5 px rim is dropped);
  mean over pixels and channels per frame, then over frames.
- E_warp (Lai et al. 2018): optical flow F from original frame t to t+1 and back (OpenCV DIS,
  MEDIUM preset, on the original frames' BT.601 grey at full resolution). A pixel of frame t
  counts if it passes the Ruder et al. 2016 forward-backward check
  |F(x) + B(x + F(x))|^2 <= 0.01 (|F(x)|^2 + |B(x + F(x))|^2) + 0.5, is off motion
  boundaries (|du/dx|^2 + |du/dy|^2 + |dv/dx|^2 + |dv/dy|^2 <= 0.01 |F(x)|^2 + 0.002, forward
  differences), and x + F(x) lies inside the frame. Output frame t+1 is warped to t with
  bilinear sampling along F. E_warp(t) = mean over counted pixels and channels of
  (O_t - warp(O_{t+1}))^2 with RGB in [0, 1]; the clip's E_warp is the mean over pairs.
  Chroma E_warp is the same on Lab a, b (D65) divided by 100, the scale that maps L to [0, 1].
- CDC (colour distribution consistency, Liu et al. 2021): for each RGB channel a 256-bin
  histogram of the uint8 values normalised to sum 1; JS(p, q) = (KL(p||m) + KL(q||m)) / 2 with
  m = (p + q) / 2 and log base 2 (so 0 <= JS <= 1); CDC_d = mean over t and channels of
  JS(frame t, frame t + d); CDC = mean of CDC_1, CDC_2, CDC_4.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import cv2
import numpy as np

from vidcolor.frames import rgb_to_lab
from vidcolor.report import js_divergence, rgb_histograms  # shared with the QA report

CDC_STEPS = (1, 2, 4)  # frame distances d averaged by CDC
SSIM_WINDOW_SIGMA = 1.5  # px, Gaussian window of SSIM
SSIM_K1, SSIM_K2 = 0.01, 0.03
FB_REL_TOL, FB_ABS_TOL_PX2 = 0.01, 0.5  # Ruder et al. forward-backward check
MB_REL_TOL, MB_ABS_TOL = 0.01, 0.002  # Ruder et al. motion-boundary check
_dis = None


def psnr(output: np.ndarray, original: np.ndarray) -> float:
    """PSNR in dB of one frame.

    Args:
        output, original: (H, W, 3) uint8 RGB.

    Returns:
        10 * log10(1 / MSE) with values in [0, 1]; MSE floored at 1e-10.
    """
    diff = output.astype(np.float64) / 255.0 - original.astype(np.float64) / 255.0
    return float(10.0 * np.log10(1.0 / max(float(np.mean(diff * diff)), 1e-10)))


def ssim(output: np.ndarray, original: np.ndarray) -> float:
    """Mean SSIM of one frame over RGB channels (see the module docstring for the settings).

    Args:
        output, original: (H, W, 3) uint8 RGB, at least 11 px on each side.

    Returns:
        SSIM in [-1, 1].
    """
    x = output.astype(np.float64) / 255.0
    y = original.astype(np.float64) / 255.0
    c1, c2 = SSIM_K1**2, SSIM_K2**2

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), SSIM_WINDOW_SIGMA)[5:-5, 5:-5]

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(num / den))


def estimate_flow(frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
    """Dense optical flow from frame_a to frame_b (frame_a(x) ~ frame_b(x + flow(x))).

    Args:
        frame_a, frame_b: (H, W, 3) uint8 RGB original (ground-truth or input) frames.

    Returns:
        (H, W, 2) float32 displacement in pixels (x, y).
    """
    global _dis
    if _dis is None:
        _dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    gray_a = cv2.cvtColor(frame_a, cv2.COLOR_RGB2GRAY)
    gray_b = cv2.cvtColor(frame_b, cv2.COLOR_RGB2GRAY)
    return _dis.calc(gray_a, gray_b, None)


def _sample(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear sample `image` at x + flow(x); also return the mask of in-frame samples."""
    height, width = flow.shape[:2]
    map_x = (flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]).astype(np.float32)
    map_y = (flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]).astype(np.float32)
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, inside


def valid_mask(flow_fwd: np.ndarray, flow_back: np.ndarray) -> np.ndarray:
    """Pixels of frame t whose flow to t+1 can be trusted (Ruder et al. 2016).

    Args:
        flow_fwd: (H, W, 2) float32 flow t -> t+1; flow_back: (H, W, 2) float32 t+1 -> t.

    Returns:
        (H, W) bool: True where the forward-backward check passes, the pixel is not on a
        motion boundary and x + flow_fwd(x) lies inside the frame.
    """
    back_at, inside = _sample(flow_back, flow_fwd)
    fwd = flow_fwd.astype(np.float64)
    back_at = back_at.astype(np.float64)
    mismatch = ((fwd + back_at) ** 2).sum(axis=2)
    consistent = mismatch <= FB_REL_TOL * ((fwd**2).sum(axis=2) + (back_at**2).sum(axis=2)) \
        + FB_ABS_TOL_PX2
    grad2 = np.zeros(fwd.shape[:2])
    grad2[:, :-1] += ((fwd[:, :-1] - fwd[:, 1:]) ** 2).sum(axis=2)
    grad2[:-1, :] += ((fwd[:-1, :] - fwd[1:, :]) ** 2).sum(axis=2)
    smooth = grad2 <= MB_REL_TOL * (fwd**2).sum(axis=2) + MB_ABS_TOL
    return consistent & smooth & inside


def warp_errors(out_t: np.ndarray, out_next: np.ndarray, flow_fwd: np.ndarray,
                mask: np.ndarray) -> tuple[float, float]:
    """E_warp of one pair of output frames, in RGB and in chroma.

    Args:
        out_t, out_next: (H, W, 3) uint8 RGB output frames t and t+1.
        flow_fwd: (H, W, 2) float32 flow t -> t+1 measured on the original frames.
        mask: (H, W) bool pixels to count, from `valid_mask`.

    Returns:
        (rgb, chroma): mean squared difference over counted pixels and channels, RGB in
        [0, 1] and Lab a, b / 100 respectively; NaN when no pixel counts.
    """
    if not mask.any():
        return float("nan"), float("nan")
    warped, _ = _sample(out_next, flow_fwd)
    rgb_diff = out_t[mask].astype(np.float64) / 255.0 - warped[mask].astype(np.float64) / 255.0
    ab_t = rgb_to_lab(out_t[mask])[:, 1:].astype(np.float64) / 100.0
    ab_next = rgb_to_lab(warped[mask])[:, 1:].astype(np.float64) / 100.0
    return float(np.mean(rgb_diff**2)), float(np.mean((ab_t - ab_next) ** 2))


def clip_metrics(originals: Iterable[np.ndarray], outputs: Iterable[np.ndarray]) -> dict:
    """All metrics of one clip, streaming (keeps only the last few frames and histograms).

    Args:
        originals: (H, W, 3) uint8 RGB colour frames of the original clip, in order.
        outputs: (H, W, 3) uint8 RGB colourised frames, the same count, size and order.

    Returns:
        dict with "psnr", "ssim", "ewarp_rgb", "ewarp_ab", "cdc" (floats, as defined in the
        module docstring) and "frames" (int).

    Raises:
        ValueError: the two sequences differ in length or frame size.
    """
    psnrs, ssims, e_rgb, e_ab = [], [], [], []
    cdc_sums = dict.fromkeys(CDC_STEPS, 0.0)
    cdc_counts = dict.fromkeys(CDC_STEPS, 0)
    hists: deque[np.ndarray] = deque(maxlen=max(CDC_STEPS) + 1)
    prev = None
    count = 0
    for orig, out in zip(originals, outputs, strict=True):
        if orig.shape != out.shape:
            raise ValueError(f"frame {count}: original {orig.shape} vs output {out.shape}")
        psnrs.append(psnr(out, orig))
        ssims.append(ssim(out, orig))
        hists.append(rgb_histograms(out))
        for d in CDC_STEPS:
            if len(hists) > d:
                cdc_sums[d] += float(js_divergence(hists[-1 - d], hists[-1]).mean())
                cdc_counts[d] += 1
        if prev is not None:
            flow_fwd = estimate_flow(prev[0], orig)
            mask = valid_mask(flow_fwd, estimate_flow(orig, prev[0]))
            rgb_err, ab_err = warp_errors(prev[1], out, flow_fwd, mask)
            e_rgb.append(rgb_err)
            e_ab.append(ab_err)
        prev = (orig, out)
        count += 1
    cdc_values = [cdc_sums[d] / cdc_counts[d] for d in CDC_STEPS if cdc_counts[d]]
    return {
        "frames": count,
        "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
        "ssim": float(np.mean(ssims)) if ssims else float("nan"),
        "ewarp_rgb": float(np.nanmean(e_rgb)) if e_rgb else float("nan"),
        "ewarp_ab": float(np.nanmean(e_ab)) if e_ab else float("nan"),
        "cdc": float(np.mean(cdc_values)) if cdc_values else float("nan"),
    }
