"""Frame and VideoInfo records, and the pixel conventions every stage shares.

Owns the numpy-only colour maths (sRGB <-> CIE Lab, D65) so that colorize, temporal and the
evaluation scripts agree on one definition. It does no I/O and knows nothing of torch or PyAV.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# D65 reference white in XYZ, for CIE Lab.
_WHITE_XYZ = np.array([0.95047, 1.0, 1.08883], dtype=np.float32)
_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423],
     [0.212671, 0.715160, 0.072169],
     [0.019334, 0.119193, 0.950227]],
    dtype=np.float32,
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
LAB_EPSILON = 216.0 / 24389.0  # CIE constant: below it the cube root is replaced by a line
LAB_KAPPA = 24389.0 / 27.0


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded picture travelling through the stages.

    Attributes:
        index: 0-based decode order.
        pts: presentation time in `VideoInfo.time_base` units (None for stills).
        source: (H, W, 3) uint8 RGB as decoded; never modified.
        luma_plane: (H, W) uint8 or uint16, the decoded Y (or gray) plane exactly as the
            stream stores it (range and bit depth in VideoInfo), so the encoder can keep the
            input's own luminance bit for bit. None when the source had no such plane.
        color: (H, W, 3) uint8 RGB; set by colorize, refined by temporal.
        shot_start: set by the temporal stage: True where it restarted (a cut, or flow too
            unreliable), False where it carried colour over. Later readers (the QA report's
            shots) take it instead of testing the frames again. None: the stage did not run.
    """

    index: int
    pts: int | None
    source: np.ndarray
    luma_plane: np.ndarray | None = None
    color: np.ndarray | None = None
    shot_start: bool | None = None

    def with_color(self, color: np.ndarray) -> Frame:
        """Return a copy of this frame carrying `color` ((H, W, 3) uint8 RGB)."""
        return dataclasses.replace(self, color=color)


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the decoder learned about the input; the encoder reproduces it.

    Attributes:
        width, height: coded picture size in pixels (before rotation).
        fps: average frame rate, or None if the container does not say.
        time_base: unit of `Frame.pts`.
        n_frames: frame count if known or estimated from duration, else None.
        duration_s: stream duration in seconds, or None.
        pix_fmt: FFmpeg pixel format of the decoded video, e.g. "yuv420p", "gray", "yuv420p10le".
        bit_depth: bits per luma sample (8, 10, 12, 16).
        full_range: True for full-range (JPEG) luma, False for limited (TV, 16..235).
        colorspace: "bt601" or "bt709", the YUV matrix of the input.
        rotation_deg: display rotation from stream side data, counter-clockwise degrees.
        sample_aspect: pixel aspect ratio (1 for square pixels).
        codec: decoder name, e.g. "h264".
        is_still: True when the input is a single image rather than a film.
        interlaced: the first frame is coded as two fields (kept interlaced on output).
        top_field_first: field order of interlaced input.
    """

    width: int
    height: int
    fps: Fraction | None
    time_base: Fraction
    n_frames: int | None
    duration_s: float | None
    pix_fmt: str
    bit_depth: int = 8
    full_range: bool = False
    colorspace: str = "bt601"
    rotation_deg: int = 0
    sample_aspect: Fraction = Fraction(1)
    codec: str = ""
    is_still: bool = False
    interlaced: bool = False
    top_field_first: bool = True

    @property
    def upright_turns(self) -> int:
        """Quarter turns counter-clockwise (np.rot90's k) that show a coded picture upright."""
        return quarter_turns(self.rotation_deg)


def quarter_turns(rotation_deg: int) -> int:
    """Quarter turns counter-clockwise (np.rot90's k) of a display rotation in degrees."""
    return round(rotation_deg / 90) % 4


def turned(image: np.ndarray, turns: int) -> np.ndarray:
    """`image` turned `turns` quarter turns counter-clockwise (negative: clockwise), as a
    C-contiguous array (OpenCV and PyAV want one); `image` itself when there is nothing to turn."""
    return np.ascontiguousarray(np.rot90(image, turns)) if turns % 4 else image


def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """Undo the sRGB transfer curve. rgb: float32 in [0, 1]; returns float32 linear light."""
    return np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """Apply the sRGB transfer curve. linear: float32 >= 0; returns float32 in [0, 1]."""
    linear = np.clip(linear, 0.0, 1.0)
    out = np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)
    return out.astype(np.float32)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB to CIE Lab (D65).

    Args:
        rgb: (..., 3) uint8 RGB, or float RGB in [0, 1].

    Returns:
        (..., 3) float32; L in [0, 100], a and b roughly in [-128, 127].
    """
    rgb_f = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    xyz = srgb_to_linear(rgb_f) @ _RGB_TO_XYZ.T / _WHITE_XYZ
    f = np.where(xyz > LAB_EPSILON, np.cbrt(xyz), (LAB_KAPPA * xyz + 16.0) / 116.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Convert CIE Lab (D65) to sRGB.

    Args:
        lab: (..., 3) float; L in [0, 100], a and b roughly in [-128, 127].

    Returns:
        (..., 3) uint8 RGB (out-of-gamut colours are clipped).
    """
    lab = lab.astype(np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f**3 > LAB_EPSILON, f**3, (116.0 * f - 16.0) / LAB_KAPPA) * _WHITE_XYZ
    return to_uint8(linear_to_srgb(xyz @ _XYZ_TO_RGB.T))


def rgb_to_luma(rgb: np.ndarray) -> np.ndarray:
    """Lab lightness of an RGB image, scaled to [0, 1].

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W) float32 in [0, 1] (L / 100).
    """
    linear_y = srgb_to_linear(rgb.astype(np.float32) / 255.0) @ _RGB_TO_XYZ[1]
    f = np.where(linear_y > LAB_EPSILON, np.cbrt(linear_y), (LAB_KAPPA * linear_y + 16.0) / 116.0)
    return ((116.0 * f - 16.0) / 100.0).astype(np.float32)


def replace_ab(rgb: np.ndarray, ab: np.ndarray) -> np.ndarray:
    """Keep the lightness of `rgb` and give it the chroma `ab`.

    Args:
        rgb: (H, W, 3) uint8 RGB whose L is kept.
        ab: (H, W, 2) float, Lab a and b.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = ab
    return lab_to_rgb(lab)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 in [0, 255], rounded and clipped."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 image in [0, 255] -> float32 in [0, 1]."""
    return image.astype(np.float32) / 255.0
