"""Blind temporal consistency for per-frame colourisations (after Bonneel et al. 2015).

Owns `TemporalOptions` and `TemporalFilter`: optical flow on the *source* luma, a confidence
weight per pixel, shot-cut resets, and a screened-Poisson solve on Lab a, b only. It never
changes lightness, never reads or writes files, and knows nothing of how `color` was made.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft

from vidcolor.errors import OptionsError, VidcolorError
from vidcolor.frames import Frame

logger = logging.getLogger(__name__)

FB_REL_TOL = 0.01  # Ruder et al. 2016 forward-backward check: relative tolerance (unitless)
FB_ABS_TOL_PX2 = 0.5  # ... and absolute tolerance, squared pixels of the working grid
MB_REL_TOL = 0.01  # Ruder et al. motion-boundary test: relative tolerance (unitless)
MB_ABS_TOL = 0.002  # ... and absolute tolerance, squared flow gradient (px/px)^2
KEEP_AB_EPS = 0.25  # Lab ab units: corrections smaller than this keep the input pixel bit for bit
HIST_BINS = 32  # bins of the luma histogram used by the cut detector
GAIN_LIMITS = (0.5, 2.0)  # allowed global luma gain between frames (film flicker, fades)


@dataclass(frozen=True)
class TemporalOptions:
    """Knobs of the temporal stage; defaults were tuned on synthetic clips made from photos.

    Trade-offs: a higher `strength` (or a lower `anchor_weight`) removes more flicker but lets
    stale colour linger longer (about strength / anchor_weight frames at most); a lower
    `change_ab` keeps the current colour of moving and revealed regions more often, at the
    price of leaving large flicker in place. Weights are per pixel of the working grid (the
    frame scaled so its long side is `flow_max_side_px`), in units of the gradient term.
    """

    strength: float = 0.6  # λ in [0, 1]: pull toward the warped previous output; 0 = stage off
    sigma: float = 0.05  # luma units (L/100, 0..1): warp error that lowers confidence to e^-1/2
    change_ab: float = 16.0  # Lab ab units: warped-previous vs current colour gap seen as real
    anchor_weight: float = 0.05  # per pixel, >0: pull toward this frame's own colour (bounds lag)
    flow_max_side_px: int = 320  # px: long side of the grid for flow, confidence and the solve
    solver_iterations: int = 4  # preconditioned conjugate-gradient iterations per frame (>= 1)
    cut_hist_distance: float = 0.4  # total variation (0..1) of luma histograms that is a cut
    cut_min_confidence: float = 0.15  # mean flow confidence (0..1) below which a shot starts

    def __post_init__(self) -> None:
        _check_range("strength", self.strength, 0.0, 1.0)
        _check_range("sigma", self.sigma, 1e-4, 1.0)
        _check_range("change_ab", self.change_ab, 0.5, 256.0)
        _check_range("anchor_weight", self.anchor_weight, 1e-6, 10.0)
        _check_range("cut_hist_distance", self.cut_hist_distance, 0.0, 1.0)
        _check_range("cut_min_confidence", self.cut_min_confidence, 0.0, 1.0)
        for name, value, low in (("flow_max_side_px", self.flow_max_side_px, 16),
                                 ("solver_iterations", self.solver_iterations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise OptionsError(
                    f"TemporalOptions.{name} must be an integer >= {low}, got {value!r}"
                )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    """Raise OptionsError unless `low <= value <= high` (NaN fails too)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise OptionsError(f"TemporalOptions.{name} must be in [{low}, {high}], got {value!r}")


@dataclass
class _Previous:
    """What the filter keeps of frame t-1, all on the working grid of (h, w) pixels."""

    luma: np.ndarray  # (h, w) float32 source L/100 in [0, 1]
    luma_u8: np.ndarray  # (h, w) uint8, the same for DIS flow
    out_ab: np.ndarray  # (h, w, 2) float32 Lab a, b of the previous *output*


class TemporalFilter:
    """Remove flicker from per-frame colourisations, one frame at a time.

    For each frame t of a shot, with P_t the incoming Lab a, b and O_{t-1} the previous output,
    the output a, b is O_t = P_t + D, where D minimises
    ``|grad D|^2 + w |D - (warp(O_{t-1}) - P_t)|^2 + anchor_weight |D|^2``, i.e. O_t keeps the
    gradients of P_t (Bonneel et al.'s screened Poisson problem) while the anchor term stops
    stale colour from persisting. The weight ``w = strength * c_flow * c_change`` is zero where
    flow cannot be trusted (warp error of the source luma, forward-backward mismatch, motion
    boundaries, pixels that came from outside the frame) and falls where the warped previous
    colour differs from the current one by much more than flicker does (``change_ab``), so
    moving and newly revealed regions keep this frame's colour. D is solved on a small grid by
    conjugate gradients preconditioned with a DCT solve and added back at full resolution.

    The filter holds only the previous frame's luma and output a, b on that grid, so memory
    does not grow with the clip. The first frame of each shot passes through unchanged.
    """

    def __init__(self, opts: TemporalOptions | None = None) -> None:
        """Args:
        opts: the stage's knobs; `TemporalOptions()` when None.
        """
        self.opts = opts or TemporalOptions()
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._prev: _Previous | None = None
        self._cuts = ShotCutTest(self.opts)
        self._eig: tuple[tuple[int, int], np.ndarray] | None = None

    def reset(self) -> None:
        """Forget the history, so that the next frame starts a new shot."""
        self._prev = None
        self._cuts.reset()

    def run(self, frames: Iterable[Frame]) -> Iterator[Frame]:
        """Filter a stream of frames lazily, one output per input, in order, pts kept.

        Args:
            frames: Frames with `color` set ((H, W, 3) uint8 RGB), in decode order.

        Yields:
            The same frames with `color` replaced by the temporally consistent colours.

        Raises:
            VidcolorError: a frame arrives without `color`.
        """
        for frame in frames:
            yield self.step(frame)

    def step(self, frame: Frame) -> Frame:
        """Filter the next frame of the stream.

        Args:
            frame: `source` (H, W, 3) uint8 RGB and `color` (H, W, 3) uint8 RGB, the per-frame
                colourisation of that source.

        Returns:
            The frame with `color` replaced: same L as the incoming `color`, Lab a, b made
            consistent with the previous output, and `shot_start` False. When the frame
            starts a shot, its colour is kept and `shot_start` is True; when `strength` is 0,
            the frame is returned as is.

        Raises:
            VidcolorError: `frame.color` is None (the colorize stage did not run).
        """
        if frame.color is None:
            raise VidcolorError(
                f"Frame {frame.index} has no colour; run the colorize stage before TemporalFilter"
            )
        if self.opts.strength == 0.0:
            return frame
        size = _work_size(frame.source.shape[:2], self.opts.flow_max_side_px)
        luma = _work_luma(frame.source, size)
        luma_u8 = np.rint(luma * 255.0).astype(np.uint8)
        rgb = np.multiply(frame.color, np.float32(1.0 / 255.0), dtype=np.float32)
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)  # (H, W, 3) float32
        ab = np.ascontiguousarray(cv2.resize(lab, size, interpolation=cv2.INTER_AREA)[..., 1:])
        prev, self._prev = self._prev, None
        cut = self._cuts.check(frame.source.shape[:2], _luma_hist(luma_u8))
        correction = None if prev is None or cut else self._correction(prev, luma, luma_u8, ab)
        self._prev = _Previous(luma, luma_u8, ab)
        if correction is None:
            logger.debug("frame %d starts a shot; temporal history reset", frame.index)
            return dataclasses.replace(frame, shot_start=True)
        self._prev.out_ab = ab + correction
        corrected = _apply_correction(frame.color, lab, correction)
        return dataclasses.replace(frame, color=corrected, shot_start=False)

    def _correction(self, prev: _Previous, luma: np.ndarray, luma_u8: np.ndarray,
                    ab: np.ndarray) -> np.ndarray | None:
        """Solve for D on the working grid; None when the flow says this is a new shot.

        Returns:
            (h, w, 2) float32 Lab a, b correction, or None at a cut.
        """
        opts = self.opts
        confidence, map_x, map_y = _flow_trust(self._dis, prev.luma, prev.luma_u8, luma,
                                               luma_u8, opts.sigma)
        if float(confidence.mean()) < opts.cut_min_confidence:
            return None
        target = _remap(prev.out_ab, map_x, map_y) - ab  # (h, w, 2) warp(O_{t-1}) - P_t
        gap2 = cv2.blur(_norm2(target), (3, 3))  # (h, w) squared ab distance
        # A gap far above flicker size is a real change (a revealed or fast-moving object whose
        # luma barely differs, flow dragging a neighbour's colour): keep this frame's colour.
        weight = opts.strength * confidence * np.exp(-gap2 / (2.0 * opts.change_ab**2))
        return self._solve(weight.astype(np.float32), target)

    def _solve(self, weight: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Minimise |grad D|^2 + weight |D - target|^2 + anchor |D|^2 per channel.

        Args:
            weight: (h, w) float32 >= 0.
            target: (h, w, 2) float32 Lab a, b.

        Returns:
            (h, w, 2) float32 D.
        """
        shift = float(weight.mean()) + self.opts.anchor_weight
        diag = (weight + self.opts.anchor_weight)[None]  # (1, h, w)
        rhs = np.moveaxis(target * weight[..., None], 2, 0)  # (2, h, w)
        inv_eig = 1.0 / (self._laplacian_eigenvalues(weight.shape) + shift)
        x = _dct_solve(rhs, inv_eig)
        r = rhs - (_laplacian(x) + diag * x)
        z = _dct_solve(r, inv_eig)
        p = z
        rz = (r * z).sum(axis=(1, 2))
        for _ in range(self.opts.solver_iterations):
            ap = _laplacian(p) + diag * p
            alpha = rz / np.maximum((p * ap).sum(axis=(1, 2)), 1e-30)
            x = x + alpha[:, None, None] * p
            r = r - alpha[:, None, None] * ap
            z = _dct_solve(r, inv_eig)
            rz_new = (r * z).sum(axis=(1, 2))
            p = z + (rz_new / np.maximum(rz, 1e-30))[:, None, None] * p
            rz = rz_new
        return np.ascontiguousarray(np.moveaxis(x, 0, 2), dtype=np.float32)

    def _laplacian_eigenvalues(self, shape: tuple[int, int]) -> np.ndarray:
        """(h, w) eigenvalues of the Neumann grid Laplacian in the DCT-II basis (cached)."""
        if self._eig is None or self._eig[0] != shape:
            ky = 2.0 - 2.0 * np.cos(np.pi * np.arange(shape[0]) / shape[0])
            kx = 2.0 - 2.0 * np.cos(np.pi * np.arange(shape[1]) / shape[1])
            self._eig = (shape, (ky[:, None] + kx[None, :]).astype(np.float32))
        return self._eig[1]


class ShotCutTest:
    """TemporalFilter's histogram cut test over a stream of frames: a frame starts a new shot
    when its size changes or its luma histogram is farther than the threshold from the
    previous frame's. One definition for the filter, segment planning and the QA report, so
    all three agree on where shots start (the filter also resets where the flow fails).

    Args:
        opts: the temporal options (`cut_hist_distance`, `flow_max_side_px`).
        margin: added to `cut_hist_distance`; > 0 keeps only sure cuts.
    """

    def __init__(self, opts: TemporalOptions, margin: float = 0.0) -> None:
        self.max_side_px = opts.flow_max_side_px
        self.threshold = opts.cut_hist_distance + margin
        self._previous: tuple[tuple[int, int], np.ndarray] | None = None

    def starts_shot(self, source: np.ndarray) -> bool:
        """Test the next frame, (H, W, 3) uint8 RGB; the first frame always starts a shot."""
        return self.check(source.shape[:2], shot_luma_histogram(source, self.max_side_px))

    def check(self, shape: tuple[int, int], hist: np.ndarray) -> bool:
        """`starts_shot` for a frame whose (H, W) and `shot_luma_histogram` are known."""
        previous, self._previous = self._previous, (shape, hist)
        return (
            previous is None
            or previous[0] != shape
            or histogram_distance(hist, previous[1]) > self.threshold
        )

    def reset(self) -> None:
        """Forget the previous frame: the next one starts a shot."""
        self._previous = None


class ResetTest:
    """Exactly where TemporalFilter restarts, from the input frames alone: a `ShotCutTest` cut,
    or optical flow to the previous frame too unreliable (mean confidence below
    `cut_min_confidence`), as at a cut between two shots of similar brightness. What must
    change only where the filter restarts (the reference still of a shot, the QA report's
    shots) uses this; it costs two small optical flows per frame.
    """

    def __init__(self, opts: TemporalOptions) -> None:
        self.opts = opts
        self._cuts = ShotCutTest(opts)
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
        self._prev: tuple[np.ndarray, np.ndarray] | None = None

    def starts_shot(self, source: np.ndarray) -> bool:
        """Test the next frame, (H, W, 3) uint8 RGB; the first frame always starts a shot."""
        luma = _work_luma(source, _work_size(source.shape[:2], self.opts.flow_max_side_px))
        luma_u8 = np.rint(luma * 255.0).astype(np.uint8)
        cut = self._cuts.check(source.shape[:2], _luma_hist(luma_u8))
        prev, self._prev = self._prev, (luma, luma_u8)
        if cut or prev is None:
            return True
        confidence, _, _ = _flow_trust(self._dis, *prev, luma, luma_u8, self.opts.sigma)
        return float(confidence.mean()) < self.opts.cut_min_confidence


def shot_luma_histogram(source: np.ndarray, max_side_px: int) -> np.ndarray:
    """The luma histogram of a frame that `ShotCutTest` compares (TemporalFilter's cut test).

    Args:
        source: (H, W, 3) uint8 RGB frame as decoded.
        max_side_px: long side of the working grid (TemporalOptions.flow_max_side_px).

    Returns:
        (HIST_BINS,) float64, sums to 1.
    """
    luma = _work_luma(source, _work_size(source.shape[:2], max_side_px))
    return _luma_hist(np.rint(luma * 255.0).astype(np.uint8))


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance (0..1) of two normalised histograms: a cut above threshold."""
    return 0.5 * float(np.abs(a - b).sum())


def _work_size(shape: tuple[int, int], max_side_px: int) -> tuple[int, int]:
    """(w, h) of the working grid, as cv2 wants it: long side <= max_side_px, never upscaled."""
    height, width = shape
    scale = min(1.0, max_side_px / max(height, width))
    return max(8, round(width * scale)), max(8, round(height * scale))


def _work_luma(source: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 Lab L/100 in [0, 1] of the (H, W, 3) uint8 RGB source, area-resized."""
    small = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab)
    return np.ascontiguousarray(lab[..., 0]) * np.float32(0.01)


def _luma_hist(luma_u8: np.ndarray) -> np.ndarray:
    """(HIST_BINS,) float64 normalised histogram of an (h, w) uint8 luma image."""
    hist = np.bincount(luma_u8.ravel() >> 3, minlength=HIST_BINS).astype(np.float64)
    return hist / hist.sum()


def _sample_maps(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Absolute sampling maps x + flow and the mask of samples inside the frame.

    Args:
        flow: (h, w, 2) float32 displacement in pixels.

    Returns:
        map_x, map_y: (h, w) float32; inside: (h, w) bool.
    """
    height, width = flow.shape[:2]
    map_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return map_x, map_y, inside


def _remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear backward warp of an (h, w) or (h, w, C) float32 image; edges replicated."""
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _flow_trust(dis, prev_luma: np.ndarray, prev_u8: np.ndarray, luma: np.ndarray,
                luma_u8: np.ndarray, sigma: float) -> tuple[np.ndarray, ...]:
    """DIS flow both ways between frames t-1 and t, and how far it can be trusted.

    Returns:
        confidence (h, w) float32 in [0, 1] (`_flow_confidence`), and the maps map_x, map_y
        (h, w) float32 that warp frame t-1 onto frame t.
    """
    flow_back = dis.calc(luma_u8, prev_u8, None)  # (h, w, 2) t -> t-1, px
    flow_fwd = dis.calc(prev_u8, luma_u8, None)  # (h, w, 2) t-1 -> t, px
    map_x, map_y, inside = _sample_maps(flow_back)
    confidence = _flow_confidence(luma, prev_luma, flow_back, flow_fwd, map_x, map_y, inside,
                                  sigma)
    return confidence, map_x, map_y


def _flow_confidence(luma: np.ndarray, prev_luma: np.ndarray, flow_back: np.ndarray,
                     flow_fwd: np.ndarray, map_x: np.ndarray, map_y: np.ndarray,
                     inside: np.ndarray, sigma: float) -> np.ndarray:
    """How far warp(t-1) can be trusted at each pixel of t.

    Args:
        luma, prev_luma: (h, w) float32 L/100 in [0, 1] of frames t and t-1.
        flow_back: (h, w, 2) float32 flow t -> t-1; flow_fwd: (h, w, 2) float32 t-1 -> t.
        map_x, map_y, inside: from `_sample_maps(flow_back)`.
        sigma: luma warp error (0..1) at which confidence is e^-1/2.

    Returns:
        (h, w) float32 in [0, 1]: a Gaussian of the gain-compensated luma warp error, zero
        where the flow leaves the frame, fails the forward-backward check or crosses a
        motion boundary, and eroded by one pixel so occlusion edges are not trusted.
    """
    warped = _remap(prev_luma, map_x, map_y)
    if inside.any():
        cur, old = luma[inside], warped[inside]
        gain = float(np.clip(cur.std() / max(float(old.std()), 1e-4), *GAIN_LIMITS))
        warped = gain * (warped - old.mean()) + cur.mean()
    err2 = cv2.blur((luma - warped) ** 2, (3, 3))
    confidence = np.exp(-err2 / (2.0 * sigma * sigma))
    back_fwd = _remap(flow_fwd, map_x, map_y) + flow_back  # ~0 where the two flows agree
    speed2 = _norm2(flow_back)
    occluded = _norm2(back_fwd) > FB_REL_TOL * (speed2 + _norm2(back_fwd - flow_back)) \
        + FB_ABS_TOL_PX2
    grad_y, grad_x = np.gradient(flow_back, axis=(0, 1))  # (h, w, 2) each
    boundary = _norm2(grad_x) + _norm2(grad_y) > MB_REL_TOL * speed2 + MB_ABS_TOL
    confidence[occluded | boundary | ~inside] = 0.0
    return cv2.erode(confidence, np.ones((3, 3), np.uint8))


def _norm2(vectors: np.ndarray) -> np.ndarray:
    """(h, w) squared length of (h, w, 2) vectors (faster than a sum over the last axis)."""
    return vectors[..., 0] ** 2 + vectors[..., 1] ** 2


def _laplacian(x: np.ndarray) -> np.ndarray:
    """Neumann graph Laplacian (positive semi-definite) of (C, h, w) images, per channel."""
    out = np.zeros_like(x)
    dx = x[:, :, 1:] - x[:, :, :-1]
    out[:, :, :-1] -= dx
    out[:, :, 1:] += dx
    dy = x[:, 1:, :] - x[:, :-1, :]
    out[:, :-1, :] -= dy
    out[:, 1:, :] += dy
    return out


def _dct_solve(rhs: np.ndarray, inv_eig: np.ndarray) -> np.ndarray:
    """Solve (Laplacian + constant) x = rhs for (C, h, w) rhs, exactly, in the DCT-II basis."""
    coef = scipy.fft.dctn(rhs, type=2, axes=(1, 2), norm="ortho")
    return scipy.fft.idctn(coef * inv_eig, type=2, axes=(1, 2), norm="ortho")


def _apply_correction(color: np.ndarray, lab: np.ndarray, correction: np.ndarray) -> np.ndarray:
    """Add a working-grid ab correction to a full-size colour frame.

    Args:
        color: (H, W, 3) uint8 RGB, the per-frame colourisation.
        lab: (H, W, 3) float32 Lab of `color` (modified in place).
        correction: (h, w, 2) float32 Lab a, b.

    Returns:
        (H, W, 3) uint8 RGB: L of `color`, a, b + the upsampled correction; pixels whose
        correction is below KEEP_AB_EPS are `color`'s own, bit for bit.
    """
    height, width = color.shape[:2]
    delta = np.zeros((*correction.shape[:2], 3), np.float32)  # (h, w, 3) Lab, L untouched
    delta[..., 1:] = correction
    cv2.add(lab, cv2.resize(delta, (width, height), interpolation=cv2.INTER_LINEAR), dst=lab)
    out = cv2.convertScaleAbs(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), alpha=255.0)  # rounds
    # Bilinear upsampling stays below KEEP_AB_EPS wherever all 4 nearest grid values do.
    small = np.maximum(np.abs(correction[..., 0]), np.abs(correction[..., 1])) >= KEEP_AB_EPS
    changed = cv2.dilate(small.astype(np.uint8), np.ones((3, 3), np.uint8))
    keep = cv2.resize(changed, (width, height), interpolation=cv2.INTER_NEAREST) == 0
    np.copyto(out, color, where=keep[..., None])
    return out
