"""Tests of vidcolor.temporal: invariants on synthetic patterns, behaviour on real clips.

Real clips come from ../shared/data/eval/videos (decoded here with PyAV; their colour frames play
the per-frame colourisation and their grey copies the source); those tests skip without it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidcolor.errors import OptionsError, VidcolorError
from vidcolor.frames import Frame, lab_to_rgb, rgb_to_lab
from vidcolor.temporal import TemporalFilter, TemporalOptions

EVAL_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "eval" / "videos"


def _gray(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same lightness with a = b = 0, as uint8 RGB."""
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = 0.0
    return lab_to_rgb(lab)


def _shift_ab(rgb: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Add a global Lab (a, b) offset to an (H, W, 3) uint8 RGB image."""
    lab = rgb_to_lab(rgb)
    lab[..., 1:] += offset.astype(np.float32)
    return lab_to_rgb(lab)


def _pattern_clip(n: int, seed: int, height: int = 72, width: int = 96) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a smooth colour texture panning 2 px right, 1 px down."""
    rng = np.random.default_rng(seed)
    big = (height + 2 * n, width + 2 * n)
    lab = np.empty((*big, 3), np.float32)
    for c, (scale, amp, offset) in enumerate(((6, 30, 50), (4, 40, 0), (4, 40, 0))):
        coarse = rng.normal(0, 1, (big[0] // scale, big[1] // scale)).astype(np.float32)
        lab[..., c] = offset + amp * cv2.resize(coarse, big[::-1], interpolation=cv2.INTER_CUBIC)
    rgb = lab_to_rgb(np.clip(lab, [5, -80, -80], [95, 80, 80]))
    return [rgb[t : t + height, 2 * t : 2 * t + width].copy() for t in range(n)]


def _frames(sources: list[np.ndarray], colors: list[np.ndarray]) -> list[Frame]:
    pairs = enumerate(zip(sources, colors, strict=True))
    return [Frame(i, i * 1001, s, None, c) for i, (s, c) in pairs]


def _decode(name: str, n: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """First n frames of an eval clip as (H, W, 3) uint8 RGB, optionally resized to (w, h)."""
    av = pytest.importorskip("av")
    path = EVAL_VIDEOS / name
    if not path.exists():
        pytest.skip(f"{path} is absent; the real-clip tests need ../shared/data")
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            out.append(rgb if size is None else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA))
            if len(out) == n:
                break
    return out


def _chroma_warp_error(outputs: list[np.ndarray], originals: list[np.ndarray]) -> float:
    """Mean squared Lab (a, b) difference between output t and output t+1 warped to t.

    Flow is measured on the originals (DIS), and pixels that fail a forward-backward check or
    leave the frame are not counted.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    errors = []
    for t in range(len(outputs) - 1):
        g0 = cv2.cvtColor(originals[t], cv2.COLOR_RGB2GRAY)
        g1 = cv2.cvtColor(originals[t + 1], cv2.COLOR_RGB2GRAY)
        fwd, back = dis.calc(g0, g1, None), dis.calc(g1, g0, None)
        grid = np.stack(np.meshgrid(np.arange(g0.shape[1]), np.arange(g0.shape[0])), -1)
        maps = (grid + fwd).astype(np.float32)
        back_at = cv2.remap(back, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
        scale = (fwd**2).sum(-1) + (back_at**2).sum(-1)
        valid = ((fwd + back_at) ** 2).sum(-1) < 0.01 * scale + 0.5
        valid &= (maps[..., 0] >= 0) & (maps[..., 0] <= g0.shape[1] - 1)
        valid &= (maps[..., 1] >= 0) & (maps[..., 1] <= g0.shape[0] - 1)
        warped = cv2.remap(outputs[t + 1], maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
        diff = rgb_to_lab(outputs[t])[..., 1:] - rgb_to_lab(warped)[..., 1:]
        errors.append(float(np.mean(diff[valid].astype(np.float64) ** 2)))
    return float(np.mean(errors))


def _psnr(outputs: list[np.ndarray], originals: list[np.ndarray]) -> float:
    pairs = zip(outputs, originals, strict=True)
    mse = np.mean([np.mean((o.astype(np.float64) - g) ** 2) for o, g in pairs])
    return float(10 * np.log10(255.0**2 / mse))


def _run(frames: list[Frame], opts: TemporalOptions | None = None) -> list[np.ndarray]:
    return [f.color for f in TemporalFilter(opts).run(frames)]


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strength", -0.1),
        ("strength", 1.5),
        ("strength", float("nan")),
        ("strength", "0.5"),
        ("sigma", 0.0),
        ("change_ab", 0.0),
        ("anchor_weight", 0.0),
        ("flow_max_side_px", 8),
        ("flow_max_side_px", 320.0),
        ("solver_iterations", 0),
        ("solver_iterations", True),
        ("cut_hist_distance", 1.5),
        ("cut_min_confidence", -0.1),
    ],
)
def test_bad_options_raise_options_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(OptionsError, match=field):
        TemporalOptions(**{field: value})


def test_options_are_frozen_and_replaceable() -> None:
    opts = TemporalOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.strength = 0.1  # type: ignore[misc]
    assert dataclasses.replace(opts, strength=0.0).strength == 0.0
    assert issubclass(OptionsError, ValueError)


# --- stream contract -----------------------------------------------------------------------


def test_run_keeps_order_count_pts_and_source() -> None:
    colors = _pattern_clip(8, seed=1)
    vfr_pts = [0, 1001, 3003, 4004, 4505, 7007, 8008, 9009]
    frames = [
        Frame(i, pts, _gray(c), None, c)
        for i, (pts, c) in enumerate(zip(vfr_pts, colors, strict=True))
    ]
    out = list(TemporalFilter().run(iter(frames)))
    assert [f.index for f in out] == [f.index for f in frames]
    assert [f.pts for f in out] == [f.pts for f in frames]
    for before, after in zip(frames, out, strict=True):
        assert after.source is before.source
        assert after.color.shape == before.color.shape and after.color.dtype == np.uint8


def test_run_is_lazy() -> None:
    colors = _pattern_clip(6, seed=2)
    pulled = []

    def source():
        for frame in _frames([_gray(c) for c in colors], colors):
            pulled.append(frame.index)
            yield frame

    stream = TemporalFilter().run(source())
    next(stream)
    next(stream)
    assert pulled == [0, 1]


def test_frame_without_color_raises() -> None:
    frame = Frame(0, 0, np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(VidcolorError, match="no colour"):
        TemporalFilter().step(frame)


def test_lightness_is_kept() -> None:
    rng = np.random.default_rng(3)
    colors = [_shift_ab(c, rng.normal(0, 8, 2)) for c in _pattern_clip(6, seed=3)]
    out = _run(_frames([_gray(c) for c in colors], colors))
    for before, after in zip(colors, out, strict=True):
        diff = np.abs(rgb_to_lab(before)[..., 0] - rgb_to_lab(after)[..., 0])
        # L only moves by uint8 rounding of RGB (up to ~1 unit in dark, saturated pixels).
        assert diff.mean() < 0.35 and np.percentile(diff, 99) < 2.0


def test_state_does_not_grow_with_clip_length() -> None:
    colors = _pattern_clip(24, seed=4)
    temporal = TemporalFilter()
    stream = temporal.run(_frames([_gray(c) for c in colors], colors))
    sizes = []
    for i, _ in enumerate(stream):
        if i in (3, 23):
            state = vars(temporal._prev).values()
            sizes.append(sum(v.nbytes for v in state if isinstance(v, np.ndarray)))
    assert sizes[0] == sizes[1]


# --- invariants ----------------------------------------------------------------------------


def test_strength_zero_returns_input_colours_exactly() -> None:
    rng = np.random.default_rng(5)
    colors = [_shift_ab(c, rng.normal(0, 10, 2)) for c in _pattern_clip(8, seed=5)]
    frames = _frames([_gray(c) for c in colors], colors)
    out = list(TemporalFilter(TemporalOptions(strength=0.0)).run(frames))
    for before, after in zip(frames, out, strict=True):
        assert np.array_equal(after.color, before.color)


def test_static_clip_stays_static() -> None:
    color = _pattern_clip(1, seed=6)[0]
    frames = _frames([_gray(color)] * 10, [color] * 10)
    for out in _run(frames):
        assert np.array_equal(out, color)


def test_first_frame_passes_through() -> None:
    colors = _pattern_clip(3, seed=7)
    frames = _frames([_gray(c) for c in colors], colors)
    first = TemporalFilter().step(frames[0])
    assert first.color is frames[0].color and first.source is frames[0].source
    assert first.shot_start is True


def test_synthetic_flicker_is_reduced_on_a_moving_pattern() -> None:
    clean = _pattern_clip(16, seed=8)
    rng = np.random.default_rng(8)
    flicker = [_shift_ab(c, rng.normal(0, 8, 2)) for c in clean]
    out = _run(_frames([_gray(c) for c in clean], flicker))
    added = _chroma_warp_error(flicker, clean) - _chroma_warp_error(clean, clean)
    left = _chroma_warp_error(out, clean) - _chroma_warp_error(clean, clean)
    assert left < 0.3 * added
    assert _psnr(out, clean) > _psnr(flicker, clean)


def test_cut_between_synthetic_shots_resets_history(caplog: pytest.LogCaptureFixture) -> None:
    shot_a, shot_b = _pattern_clip(6, seed=9), _pattern_clip(6, seed=10)
    rng = np.random.default_rng(9)
    colors = [_shift_ab(c, rng.normal(0, 8, 2)) for c in shot_a + shot_b]
    frames = _frames([_gray(c) for c in shot_a + shot_b], colors)
    with caplog.at_level(logging.DEBUG, logger="vidcolor.temporal"):
        out = _run(frames)
    assert np.array_equal(out[6], colors[6])
    alone = _run(frames[6:])
    assert all(np.array_equal(a, b) for a, b in zip(out[6:], alone, strict=True))
    starts = [r.getMessage() for r in caplog.records if "starts a shot" in r.getMessage()]
    assert len(starts) == 2


def test_frame_size_change_resets_history() -> None:
    small, large = _pattern_clip(3, seed=11), _pattern_clip(3, seed=11, height=80, width=100)
    frames = _frames([_gray(c) for c in small + large], small + large)
    out = _run(frames)
    assert np.array_equal(out[3], large[0])


# --- real clips ----------------------------------------------------------------------------


@pytest.mark.shared
def test_injected_flicker_on_a_real_clip_is_mostly_removed() -> None:
    clean = _decode("davis_bmx-trees.mp4", 24)
    rng = np.random.default_rng(12)
    flicker = [_shift_ab(c, rng.uniform(-10, 10, 2)) for c in clean]
    out = _run(_frames([_gray(c) for c in clean], flicker))
    base = _chroma_warp_error(clean, clean)
    added = _chroma_warp_error(flicker, clean) - base
    left = _chroma_warp_error(out, clean) - base
    assert left < 0.3 * added, (base, added, left)
    assert _psnr(out, clean) > _psnr(flicker, clean)


@pytest.mark.shared
def test_cut_between_real_shots_carries_no_colour(caplog: pytest.LogCaptureFixture) -> None:
    shot_a = _decode("davis_bmx-trees.mp4", 10, size=(320, 240))
    shot_b = _decode("mmaction2_eyemakeup_audio.mp4", 10, size=(320, 240))
    rng = np.random.default_rng(13)
    colors = [_shift_ab(c, rng.uniform(-10, 10, 2)) for c in shot_a + shot_b]
    frames = _frames([_gray(c) for c in shot_a + shot_b], colors)
    with caplog.at_level(logging.DEBUG, logger="vidcolor.temporal"):
        out = _run(frames)
    assert np.array_equal(out[10], colors[10])
    assert all(np.array_equal(a, b) for a, b in zip(out[10:], _run(frames[10:]), strict=True))
    assert any(not np.array_equal(o, c) for o, c in zip(out[1:10], colors[1:10], strict=True))
    starts = [r.getMessage() for r in caplog.records if "starts a shot" in r.getMessage()]
    assert len(starts) == 2, starts


@pytest.mark.shared
def test_real_static_clip_stays_static() -> None:
    color = _decode("mmaction2_eyemakeup_audio.mp4", 1)[0]
    for out in _run(_frames([_gray(color)] * 8, [color] * 8)):
        assert np.array_equal(out, color)


def test_reset_test_agrees_with_the_filter_frame_by_frame(media_dir):
    """ResetTest (used to choose a still per shot and by the QA report) starts a shot exactly
    where TemporalFilter restarts: at a histogram cut and where the flow fails."""
    from conftest import PHOTO_SIZE, photo_shots, write_clip

    from vidcolor import io
    from vidcolor.temporal import ResetTest

    clip = write_clip(media_dir / "three_photos.mp4", n_frames=30, width=PHOTO_SIZE[0],
                      height=PHOTO_SIZE[1], frame_of=photo_shots(("coffee", "astronaut",
                                                                   "rocket"), 10))
    frames = list(io.read_frames(clip))
    filt, test = TemporalFilter(), ResetTest(TemporalOptions())
    outputs = [filt.step(f.with_color(f.source)) for f in frames]
    restarts = [f.index for f, out in zip(frames, outputs, strict=True) if out.color is f.source]
    starts = [f.index for f in frames if test.starts_shot(f.source)]
    assert starts == restarts == [0, 10, 20]
    # and the filter marks them, for the QA report (which then tests nothing again)
    assert [out.index for out in outputs if out.shot_start] == restarts
    assert all(out.shot_start is False for out in outputs if out.index not in restarts)
    assert TemporalFilter(TemporalOptions(strength=0.0)).step(outputs[0]) is outputs[0]
