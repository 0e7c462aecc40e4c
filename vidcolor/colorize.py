"""Colorizer: encode the reference still once, then colourise frames in CIE Lab, in batches.

Only ab is predicted: every output keeps its input's own lightness L. The network sees a fixed
working resolution whatever the input size; its low-resolution ab is brought to full resolution
by a fast guided filter (He & Sun 2015) steered by the full-resolution input luminance.
It does no file I/O and no temporal smoothing; the model is built by `weights.load_model`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from . import frames
from .backbone import check_grid_stride
from .errors import OptionsError, ReferenceImageError
from .frames import Frame
from .model import MODEL_KINDS, MatchReference, NetReference

logger = logging.getLogger(__name__)

MIN_REFERENCE_SIDE_PX = 32  # shorter side of a usable reference still, px
MIN_REFERENCE_CHROMA = 1.0  # mean Lab chroma sqrt(a^2 + b^2) below which a reference is grey
WORK_MULTIPLE_PX = 16  # working sizes are rounded to this, the deepest default tap's stride
GAMUT_MARGIN = 1e-6  # RGB this close to 0 or 1 counts as clipped by the Lab -> RGB conversion
MAX_BATCH_SIZE = 256  # frames per network call; a sanity bound, not a tuning value
# What the attention carries per reference pixel besides its ab, for the guided upsampling:
# slope (a, b per unit of lightness), window mean lightness, then a and b again (to compare).
CARRIED_CHANNELS = 5
# Default guided-filter radius per method, working px. The net's output is sharper (its convex
# upsampling and lightness regression) and a 5 x 5 window blurred part of that away: radius 1
# gave it +0.12 dB on held-out train photos (35.34 -> 35.46; radius 3: 35.08, 0: 35.23); the
# matcher's smoother output is best at 2 (radius 1: 34.47 -> 34.43).
GUIDE_RADIUS_PX = {"net": 1, "match": 2}


@dataclass(frozen=True)
class ColorizeOptions:
    """Per-run knobs of the colouriser. Derive variants with `dataclasses.replace`."""

    method: str = "net"  # colouriser: "net" (learned ColorNet) or "match" (training-free)
    work_side_px: int = 256  # long side of the image the network sees, px (rounded to 16)
    feature_stride_px: int | None = None  # matching grid stride, working px; None = model default
    batch_size: int = 4  # frames per network call
    # guided-filter window radius, working-image px; 0 = plain bilinear; None = the method's
    # own (GUIDE_RADIUS_PX)
    guide_radius_px: int | None = None
    guide_eps: float = 1e-3  # guided-filter regulariser, (L / 100)^2 units; larger = less edgy

    def __post_init__(self) -> None:
        if self.method not in MODEL_KINDS:
            raise OptionsError(
                f"ColorizeOptions.method must be one of {MODEL_KINDS}, got {self.method!r}"
            )
        if not 64 <= self.work_side_px <= 2048:
            raise OptionsError(
                f"ColorizeOptions.work_side_px must be in [64, 2048], got {self.work_side_px}"
            )
        if self.feature_stride_px is not None:
            check_grid_stride(self.feature_stride_px, "ColorizeOptions.feature_stride_px")
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise OptionsError(
                f"ColorizeOptions.batch_size must be in [1, {MAX_BATCH_SIZE}], "
                f"got {self.batch_size}"
            )
        if self.guide_radius_px is None:
            object.__setattr__(self, "guide_radius_px", GUIDE_RADIUS_PX[self.method])
        if not 0 <= self.guide_radius_px <= 32:
            raise OptionsError(
                f"ColorizeOptions.guide_radius_px must be in [0, 32], got {self.guide_radius_px}"
            )
        if not self.guide_eps > 0.0:
            raise OptionsError(f"ColorizeOptions.guide_eps must be > 0, got {self.guide_eps}")


class Colorizer:
    """Colourises images or frames from a reference still, each reference encoded once.

    With several references, `use_reference` (or `run`'s `reference_of`) picks the one in
    force; each is encoded the first time it is used and kept for the rest of the run.

    Args:
        model: a colouriser from `weights.load_model` (eval mode); it runs on its own device.
        reference_rgb: (H, W, 3) uint8 RGB colour still, shorter side >= MIN_REFERENCE_SIDE_PX,
            or a list of such stills (the first is in force at the start).
        opts: run options; defaults to ColorizeOptions() for the model's own method.
        upright_turns: quarter turns counter-clockwise that show the images upright (a film's
            `VideoInfo.upright_turns`). The network then sees them upright, as it sees the
            reference and as it was trained; outputs come back in the images' own orientation.

    Raises:
        ReferenceImageError: the reference is not an (H, W, 3) uint8 image, is too small, or is
            grey (mean chroma < MIN_REFERENCE_CHROMA): it has no colours to give.
        OptionsError: `opts.method` does not match the model's kind.
    """

    def __init__(
        self, model: nn.Module, reference_rgb: np.ndarray | list[np.ndarray],
        opts: ColorizeOptions | None = None, upright_turns: int = 0,
    ) -> None:
        kind = model.config.kind
        self.opts = opts or ColorizeOptions(method=kind)  # no options: the model's own method
        if kind != self.opts.method:
            raise OptionsError(
                f"ColorizeOptions.method is {self.opts.method!r} but the model is {kind!r}; "
                f"load the model with load_model({self.opts.method!r})"
            )
        self.model = model
        self.upright_turns = upright_turns % 4
        self.device = next(model.parameters()).device
        self._luma_lut = _make_luma_lut()
        self._max_chroma = _max_chroma_table()
        self._buffers: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        stills = [reference_rgb] if isinstance(reference_rgb, np.ndarray) else list(reference_rgb)
        if not stills:
            raise ReferenceImageError("No reference still given")
        for still in stills:
            _check_reference(still)  # every one, before any work
        self._references_rgb = stills  # kept to re-encode after a fall back to the CPU
        self._encoded: dict[int, MatchReference | NetReference] = {}
        self._current = 0
        self.use_reference(0)

    @property
    def reference(self) -> MatchReference | NetReference:
        """The encoded reference in force."""
        return self._encoded[self._current]

    def use_reference(self, index: int) -> None:
        """Colourise from the `index`-th reference still from now on (encoding it once)."""
        if not 0 <= index < len(self._references_rgb):
            raise IndexError(f"reference {index} of {len(self._references_rgb)}")
        if index not in self._encoded:
            with torch.inference_mode():
                self._encoded[index] = self._encode_reference(self._references_rgb[index])
        self._current = index

    def colorize_rgb(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Colourise a list of images, keeping each one's own lightness.

        Args:
            images: each (H, W, 3) uint8 RGB, any size (sizes may differ); a colour image is
                reduced to its luminance first.

        Returns:
            One (H, W, 3) uint8 RGB image per input, same order and size: the input's Lab L with
            the predicted ab.

        Raises:
            ValueError: an image is not (H, W, 3) uint8.
        """
        for image in images:
            _check_rgb(image, "image")
        lumas = [self._luma(frames.turned(image, self.upright_turns)) for image in images]
        outputs: list[np.ndarray] = []
        start = 0
        while start < len(lumas):
            # Batch consecutive images of the same working size (all of them, for a film).
            shape = _work_shape(lumas[start].shape, self.opts.work_side_px)
            stop = start + 1
            while (
                stop < len(lumas)
                and stop - start < self.opts.batch_size
                and _work_shape(lumas[stop].shape, self.opts.work_side_px) == shape
            ):
                stop += 1
            outputs.extend(self._colorize_batch(lumas[start:stop], shape))
            start = stop
        return [frames.turned(output, -self.upright_turns) for output in outputs]

    def step(self, frame: Frame) -> Frame:
        """Colourise one frame; returns it with `color` set ((H, W, 3) uint8 RGB)."""
        return frame.with_color(self.colorize_rgb([frame.source])[0])

    def run(self, frames_in: Iterable[Frame],
            reference_of: Callable[[int], int] | None = None) -> Iterator[Frame]:
        """Colourise a stream of frames `batch_size` at a time, in order, one out per one in.

        Args:
            frames_in: frames in decode order.
            reference_of: frame index -> index of the reference still that colours it (a
                batch never mixes two); None keeps the one in force.
        """
        batch: list[Frame] = []
        for frame in frames_in:
            wanted = self._current if reference_of is None else reference_of(frame.index)
            if batch and wanted != self._current:
                yield from self._colorize_frames(batch)
                batch = []
            self.use_reference(wanted)
            batch.append(frame)
            if len(batch) == self.opts.batch_size:
                yield from self._colorize_frames(batch)
                batch = []
        if batch:
            yield from self._colorize_frames(batch)

    def _colorize_frames(self, batch: list[Frame]) -> list[Frame]:
        colors = self.colorize_rgb([frame.source for frame in batch])
        return [frame.with_color(color) for frame, color in zip(batch, colors, strict=True)]

    def _encode_reference(self, reference_rgb: np.ndarray) -> MatchReference | NetReference:
        """Encode a (checked) reference still at the working resolution."""
        lab = frames.rgb_to_lab(reference_rgb)  # (H, W, 3) float32, once per run
        height, width = _work_shape(lab.shape[:2], self.opts.work_side_px)
        lab_work = cv2.resize(lab, (width, height), interpolation=cv2.INTER_AREA)
        lab_t = torch.from_numpy(lab_work).permute(2, 0, 1).unsqueeze(0).to(self.device)
        logger.info(
            "reference %dx%d encoded at %dx%d on %s",
            reference_rgb.shape[1], reference_rgb.shape[0], width, height, self.device,
        )
        carry = None
        if self.opts.guide_radius_px > 0:
            carried = reference_carry(lab_work, self.opts.guide_radius_px, self.opts.guide_eps)
            carry = torch.from_numpy(carried).permute(2, 0, 1).unsqueeze(0).to(self.device)
        return self.model.encode_reference(
            lab_t[:, :1] / 100.0, lab_t[:, 1:], self.opts.feature_stride_px, carry
        )

    def _luma(self, rgb: np.ndarray) -> np.ndarray:
        """`frames.rgb_to_luma` of (H, W, 3) uint8 RGB (equal to float rounding), but fast:
        per-channel lookup tables, one weighted sum, one cube root. Returns (H, W) float32."""
        linear_y = cv2.transform(cv2.LUT(rgb, self._luma_lut), np.ones((1, 3), np.float32))
        y = torch.from_numpy(linear_y)  # (H, W) float32 linear Y in [0, 1]
        # frames' constants: one definition of the CIE maths for the whole package.
        luma = torch.where(
            y > frames.LAB_EPSILON, y.pow(1.0 / 3.0) * 1.16 - 0.16, y * (frames.LAB_KAPPA / 100)
        )
        return luma.numpy()

    def _colorize_batch(self, lumas: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
        """Network at working size on the model's device, then guided upsampling on the host."""
        work = np.stack(
            [cv2.resize(luma, shape[::-1], interpolation=cv2.INTER_AREA) for luma in lumas]
        )  # (B, h, w) float32 luminance
        values = self._network_ab(work)  # (B, h/s, w/s, 2 or 7): ab, then what was carried
        radius, eps = self.opts.guide_radius_px, self.opts.guide_eps
        return [
            self._compose(luma, upsampling_coefficients(grid_values, luma_work, radius, eps))
            for luma, luma_work, grid_values in zip(lumas, work, values, strict=True)
        ]

    def _network_ab(self, work: np.ndarray) -> np.ndarray:
        """(B, h, w) float32 luminance -> (B, h/s, w/s, 2 + k) float32 ab (then the k carried
        channels) from the network.

        CUDA out of memory is never passed over silently (a peer returns uncoloured frames):
        the batch is split in halves, and later batches keep the smaller size; if even one
        frame does not fit, the model and reference move to the CPU with a warning.
        """
        try:
            with torch.inference_mode():
                work_t = _to_device(work, self.device)  # (B, 1, h, w)
                with _autocast(self.device):
                    ab_grid = self.model(work_t, self.reference)  # (B, 2, h / s, w / s)
                return ab_grid.permute(0, 2, 3, 1).float().cpu().numpy()
        except torch.OutOfMemoryError:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(work) > 1:
                half = len(work) // 2
                logger.warning(
                    "%s out of memory with %d frames per batch; retrying with %d",
                    self.device, len(work), half,
                )
                self.opts = dataclasses.replace(self.opts, batch_size=half)
                halves = self._network_ab(work[:half]), self._network_ab(work[half:])
                return np.concatenate(halves)
            if self.device.type == "cpu":
                raise
            logger.warning(
                "%s out of memory for a single frame; continuing on the CPU (slower)", self.device
            )
            self.model = self.model.to("cpu")
            self.device = torch.device("cpu")
            self._encoded.clear()  # encoded on the old device: encode again when used
            self.use_reference(self._current)
            return self._network_ab(work)

    def _compose(self, luma: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """Fast guided upsampling (ab = A * L + B at full size) and Lab -> uint8 RGB.

        Args:
            luma: (H, W) float32 target luminance in [0, 1].
            coef: (h, w, 4) float32 guided-filter coefficients: A (ab per luma unit), then B (ab).

        Returns:
            (H, W, 3) uint8 RGB, a fresh array.
        """
        height, width = luma.shape
        planes, lab, rgb = self._buffers_for(height, width)  # planes: (5, H, W) float32
        for plane, coef_plane in zip(planes, cv2.split(coef), strict=False):
            cv2.resize(coef_plane, (width, height), dst=plane, interpolation=cv2.INTER_LINEAR)
        a_ab, b_ab, l_100 = planes[:2], planes[2:4], planes[4]  # planar work is SIMD-fast
        np.multiply(a_ab, luma, out=a_ab)
        np.add(a_ab, b_ab, out=a_ab)  # (2, H, W) Lab a and b
        np.multiply(luma, 100.0, out=l_100)
        cv2.merge([l_100, a_ab[0], a_ab[1]], dst=lab)  # (H, W, 3) Lab
        cv2.cvtColor(lab, cv2.COLOR_Lab2RGB, dst=rgb)  # float RGB in [0, 1], clipped
        _fit_gamut(lab, rgb, self._max_chroma)
        return cv2.convertScaleAbs(rgb, alpha=255.0)  # rounds and saturates to uint8

    def _buffers_for(self, height: int, width: int) -> tuple[np.ndarray, ...]:
        """Full-size float32 scratch for the last size seen: (5, H, W) planes (guided-filter
        A_a, A_b, B_a, B_b, then L), (H, W, 3) Lab and (H, W, 3) RGB.

        Reused because fresh multi-megabyte allocations page-fault on every frame.
        """
        if (height, width) not in self._buffers:
            self._buffers = {
                (height, width): (
                    np.empty((5, height, width), np.float32),
                    np.empty((height, width, 3), np.float32),
                    np.empty((height, width, 3), np.float32),
                )
            }
        return self._buffers[(height, width)]


def _to_device(work: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, h, w) float32 host luminance -> (B, 1, h, w) on `device`.

    On CUDA the batch goes through pinned (page-locked) memory with a non-blocking copy: the
    DMA transfer needs no staging copy, and the network's first kernels queue behind it.
    """
    tensor = torch.from_numpy(work).unsqueeze(1)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """float16 autocast on CUDA (tensor cores; softmax and reductions stay float32 under
    autocast); nothing on the CPU, where float32 is what the kernels are fast at."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16)


def _make_luma_lut() -> np.ndarray:
    """(1, 256, 3) float32: per channel, linear light of each uint8 level times its Y weight."""
    linear = frames.srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)
    y_weights = frames._RGB_TO_XYZ[1]  # the Y row of frames' sRGB -> XYZ matrix
    return (linear[:, None] * y_weights[None, :]).astype(np.float32).reshape(1, 256, 3)


def _box_filter(radius_px: int) -> Callable[[np.ndarray], np.ndarray]:
    """Box mean over (2r + 1)^2 windows, reflected borders; (h, w) or (h, w, c) keep c."""
    size = (2 * radius_px + 1, 2 * radius_px + 1)

    def box(x: np.ndarray) -> np.ndarray:
        out = cv2.blur(x, size, borderType=cv2.BORDER_REFLECT)
        return out[..., None] if out.ndim == 2 else out

    return box


def _local_linear_fit(
    guide: np.ndarray, src: np.ndarray, radius_px: int, eps: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window, the regularised least-squares fit src ~ A * guide + B of a guided filter
    (He et al.), as A and the two window means it rests on (B = mean src - A * mean guide).

    On the reference, A says how its colours change with lightness across an edge; carried to
    the target by the attention with the window's mean lightness, it gives the target's own
    edges the reference's colour edges, and its own lightness the reference's colour there.

    Args: (h, w) guide, (h, w, 2) src. Returns (h, w, 2) float32 A, (h, w, 1) mean guide and
    (h, w, 2) mean src.
    """
    box = _box_filter(radius_px)
    mean_i, mean_p = box(guide), box(src)
    cov_ip = box(guide[..., None] * src) - mean_i * mean_p
    var_i = box(guide * guide) - mean_i * mean_i
    return (cov_ip / (var_i + eps)).astype(np.float32), mean_i, mean_p


def upsampling_coefficients(
    values: np.ndarray, luma_work: np.ndarray, radius_px: int, eps: float
) -> np.ndarray:
    """Guided-filter coefficients at working size (`_guided_coefficients`) of the network's
    output, (h', w', 2 or 2 + CARRIED_CHANNELS) float32 ab then what the attention carried, for
    the (h, w) float32 working luminance in [0, 1]: the filtered ab is A * L + B at any size.
    scripts/train.py repeats these maths in torch (`guided_upsample`) to train through them."""
    values = cv2.resize(values, luma_work.shape[::-1], interpolation=cv2.INTER_LINEAR)
    ab_work, carried = values[..., :2], None
    if values.shape[-1] == 2 + CARRIED_CHANNELS:  # the matched reference's slope and window
        carried = values[..., 2:5]  # lightness, then its ab
        carried[..., :2] *= _kept_chroma(ab_work, values[..., 5:7])
    return _guided_coefficients(luma_work, ab_work, radius_px, eps, carried)


def reference_carry(lab_work: np.ndarray, radius_px: int, eps: float) -> np.ndarray:
    """(h, w, CARRIED_CHANNELS) float32 of a (h, w, 3) Lab reference at working size: its
    local ab = A * L + B (slope A, the window's mean lightness), then its plain ab (to see how
    much of it the network kept), in the order `upsampling_coefficients` reads them back. The
    attention carries them to the target for the guided upsampling; training feeds the same."""
    slope, window_luma, _ = _local_linear_fit(
        lab_work[..., 0] / 100.0, lab_work[..., 1:], radius_px, eps
    )
    return np.concatenate([slope, window_luma, lab_work[..., 1:]], -1).astype(np.float32)


def _kept_chroma(ab: np.ndarray, matched_ab: np.ndarray) -> np.ndarray:
    """(h, w, 1) share in [0, 1] of the matched reference colour's chroma that the network
    kept in `ab` ((h, w, 2) each): a colour faded for want of a trustworthy match (an
    unrelated reference) must fade its carried colour edges with it."""
    kept = cv2.magnitude(ab[..., 0], ab[..., 1])
    matched = cv2.magnitude(matched_ab[..., 0], matched_ab[..., 1])
    return np.clip(kept / np.maximum(matched, 1.0), 0.0, 1.0)[..., None]


def _guided_coefficients(
    guide: np.ndarray, src: np.ndarray, radius_px: int, eps: float,
    carried: np.ndarray | None = None,
) -> np.ndarray:
    """Mean linear coefficients of a guided filter (He et al.), to be upsampled afterwards.

    Args:
        guide: (h, w) float32 luminance in [0, 1].
        src: (h, w, 2) float32 signal to filter (Lab ab).
        radius_px: box window radius (0 = no filtering: A = 0, B = src).
        eps: regulariser in squared guide units.
        carried: (h, w, 3) float32, the reference's local linear model carried by the
            attention: slope A (ab per guide unit; `src` is too smooth to have colour edges)
            and the mean lightness L_ref of the reference window `src` came from. Then
            ab = src + A * (L - L_ref): the reference's colour at the target's own lightness
            (a brighter patch of the same sky is the reference's brighter blue). None fits A
            to `src` in the target's windows, as the plain guided filter does.

    Returns:
        (h, w, 4) float32: box-averaged A_a, A_b (ab per guide unit) then B_a, B_b (ab), so
        that the filtered ab at any resolution is A * guide + B with A, B resampled there.
    """
    if radius_px == 0:
        return np.concatenate([np.zeros_like(src), src], axis=-1)
    box = _box_filter(radius_px)
    if carried is None:
        a, mean_guide, mean_src = _local_linear_fit(guide, src, radius_px, eps)
        b = mean_src - a * mean_guide
    else:
        a = carried[..., :2]
        b = src - a * carried[..., 2:3]
    return np.concatenate([box(a), box(b)], axis=-1)


@functools.lru_cache(maxsize=1)
def _max_chroma_table() -> np.ndarray:
    """(101, 361) float32: largest in-gamut Lab chroma at L = 0..100 and hue 0..360 degrees.

    Found once per process (~0.1 s) by bisection through the Lab -> RGB conversion the frames
    use. Read-only: shared by every Colorizer.
    """
    lightness = np.arange(101, dtype=np.float32)[:, None]
    hue = np.deg2rad(np.arange(361, dtype=np.float32))[None, :]
    low, high = np.zeros((101, 361), np.float32), np.full((101, 361), 200.0, np.float32)
    for _ in range(16):  # 200 / 2^16: far below one uint8 step
        mid = (low + high) / 2
        lab = np.stack(np.broadcast_arrays(lightness, mid * np.cos(hue), mid * np.sin(hue)), -1)
        rgb = cv2.cvtColor(np.ascontiguousarray(lab, np.float32), cv2.COLOR_Lab2RGB)
        fits = cv2.inRange(rgb, (GAMUT_MARGIN,) * 3, (1.0 - GAMUT_MARGIN,) * 3) > 0
        low, high = np.where(fits, mid, low), np.where(fits, high, mid)
    low.setflags(write=False)
    return low


def _fit_gamut(lab: np.ndarray, rgb: np.ndarray, max_chroma: np.ndarray) -> None:
    """Redo out-of-gamut pixels with the largest in-gamut chroma of their L and hue.

    Clipping RGB would change the lightness we promise to keep (by up to ~6 L units on
    saturated colours); shrinking ab keeps it. Only clipped pixels are touched; the chroma
    limit is `max_chroma` interpolated at each pixel's (L, hue).

    Args:
        lab: (H, W, 3) float32 Lab that produced `rgb`.
        rgb: (H, W, 3) float32 RGB in [0, 1] from cv2 (clipped); fixed in place.
        max_chroma: from `_max_chroma_table`.
    """
    inside = cv2.inRange(rgb, (GAMUT_MARGIN,) * 3, (1.0 - GAMUT_MARGIN,) * 3)  # (H, W) 0/255
    clipped = np.flatnonzero(inside == 0)
    if clipped.size == 0:
        return
    sub = lab.reshape(-1, 3)[clipped]  # (n, 3)
    chroma, hue = cv2.cartToPolar(sub[:, 1].copy(), sub[:, 2].copy(), angleInDegrees=True)
    chroma, hue = chroma.reshape(-1), hue.reshape(-1)  # (n,) Lab chroma, hue in [0, 360)
    l_pos, h_pos = np.clip(sub[:, 0], 0, 99.999), np.clip(hue, 0, 359.999)
    l_low, h_low = l_pos.astype(np.intp), h_pos.astype(np.intp)  # floor: both >= 0
    l_frac, h_frac = l_pos - l_low, h_pos - h_low
    limit = (1 - l_frac) * (
        (1 - h_frac) * max_chroma[l_low, h_low] + h_frac * max_chroma[l_low, h_low + 1]
    ) + l_frac * (
        (1 - h_frac) * max_chroma[l_low + 1, h_low] + h_frac * max_chroma[l_low + 1, h_low + 1]
    )  # bilinear in (L, hue); the final RGB clip absorbs its tiny overshoots
    sub[:, 1:] *= np.minimum(1.0, limit / np.maximum(chroma, 1e-6))[:, None]
    rgb.reshape(-1, 3)[clipped] = cv2.cvtColor(sub[:, None, :], cv2.COLOR_Lab2RGB)[:, 0]


def _work_shape(shape: tuple[int, ...], side_px: int) -> tuple[int, int]:
    """(height, width) of the working image: long side ~ side_px, both multiples of 16 px."""
    height, width = shape[:2]
    scale = side_px / max(height, width)

    def snap(n: int) -> int:
        return max(WORK_MULTIPLE_PX, int(round(n * scale / WORK_MULTIPLE_PX)) * WORK_MULTIPLE_PX)

    return snap(height), snap(width)


def _check_rgb(image: np.ndarray, name: str) -> None:
    """Raise ValueError unless `image` is an (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or (
        image.shape[2] != 3
    ):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"{name} must be an (H, W, 3) uint8 RGB array, got {got}")


def _check_reference(reference_rgb: np.ndarray) -> None:
    """Raise ReferenceImageError unless the reference is a usable colour still."""
    try:
        _check_rgb(reference_rgb, "the reference still")
    except ValueError as e:
        raise ReferenceImageError(str(e)) from e
    height, width = reference_rgb.shape[:2]
    if min(height, width) < MIN_REFERENCE_SIDE_PX:
        raise ReferenceImageError(
            f"the reference still is {width}x{height} px; its shorter side must be at least "
            f"{MIN_REFERENCE_SIDE_PX} px: use a larger still"
        )
    step = max(1, min(height, width) // 256)  # a thumbnail is enough to judge colourfulness
    lab = frames.rgb_to_lab(reference_rgb[::step, ::step])
    chroma = float(np.hypot(lab[..., 1], lab[..., 2]).mean())
    if chroma < MIN_REFERENCE_CHROMA:
        raise ReferenceImageError(
            f"the reference still is grey (mean Lab chroma {chroma:.1f} < "
            f"{MIN_REFERENCE_CHROMA}): it has no colours to transfer; use a colour still"
        )
