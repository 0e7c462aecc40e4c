"""colorize.py: options, reference checks, shapes, kept lightness, colourfulness, self-reference
accuracy on synthetic and real photos, and the Frame stage contract (order, one out per in)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from conftest import colorful_still
from PIL import Image

from vidcolor import frames
from vidcolor.colorize import (
    GUIDE_RADIUS_PX,
    MIN_REFERENCE_SIDE_PX,
    ColorizeOptions,
    Colorizer,
    _guided_coefficients,
    _max_chroma_table,
)
from vidcolor.errors import OptionsError, ReferenceImageError
from vidcolor.frames import Frame
from vidcolor.weights import load_model

FAST = ColorizeOptions(method="match", work_side_px=128)  # shapes and contracts, not accuracy


@pytest.fixture(scope="module")
def model():
    return load_model("match", device="cpu")


def synthetic_photo(height: int = 96, width: int = 128, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB: four textured regions, each with its own colour and lightness."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    lab = np.zeros((height, width, 3), np.float32)
    regions = [
        (y < height // 2) & (x < width // 2),
        (y < height // 2) & (x >= width // 2),
        (y >= height // 2) & (x < width // 2),
        (y >= height // 2) & (x >= width // 2),
    ]
    looks = [(70, 50, 40), (55, -40, 30), (40, 10, -50), (80, -5, 60)]  # L, a, b
    for i, (region, (lightness, a, b)) in enumerate(zip(regions, looks, strict=True)):
        texture = 8 * np.sin(x / (2 + i) + y / (3 + i)) + rng.normal(0, 1.5, x.shape)
        lab[region, 0] = (lightness + texture)[region]
        lab[region, 1:] = (a, b)
    return frames.lab_to_rgb(lab)


def chroma(rgb: np.ndarray) -> float:
    lab = frames.rgb_to_lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    mse = np.mean((output.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "nope"},
        {"work_side_px": 8},
        {"feature_stride_px": 3},
        {"batch_size": 0},
        {"guide_radius_px": -1},
        {"guide_eps": 0.0},
    ],
)
def test_options_reject_bad_values(bad):
    with pytest.raises(OptionsError, match=next(iter(bad))):
        ColorizeOptions(**bad)


def test_guide_radius_defaults_to_the_methods_own():
    """Each method gets the radius measured best for it; an explicit radius is kept, also
    through the dict round trip the reel queue stores options in."""
    assert ColorizeOptions(method="net").guide_radius_px == GUIDE_RADIUS_PX["net"] == 1
    assert ColorizeOptions(method="match").guide_radius_px == GUIDE_RADIUS_PX["match"] == 2
    explicit = ColorizeOptions(method="net", guide_radius_px=3)
    assert ColorizeOptions(**dataclasses.asdict(explicit)).guide_radius_px == 3


def test_grey_reference_is_refused(model):
    grey = np.repeat(colorful_still()[..., :1], 3, axis=2)
    with pytest.raises(ReferenceImageError, match="grey"):
        Colorizer(model, grey)


def test_tiny_reference_is_refused(model):
    small = colorful_still(MIN_REFERENCE_SIDE_PX + 10, MIN_REFERENCE_SIDE_PX - 1)
    with pytest.raises(ReferenceImageError, match=f"at least {MIN_REFERENCE_SIDE_PX} px"):
        Colorizer(model, small)


@pytest.mark.parametrize("bad", [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.float32)])
def test_malformed_reference_is_refused(model, bad):
    with pytest.raises(ReferenceImageError, match="uint8"):
        Colorizer(model, bad)


def test_outputs_keep_size_order_and_lightness(model):
    colorizer = Colorizer(model, colorful_still(), dataclasses.replace(FAST, batch_size=2))
    images = [synthetic_photo(96, 128), synthetic_photo(37, 53, 1), synthetic_photo(96, 128, 2)]
    images.append(np.ascontiguousarray(images[0][:, ::-1]))
    outputs = colorizer.colorize_rgb(images)
    assert [o.shape for o in outputs] == [i.shape for i in images]
    assert all(o.dtype == np.uint8 for o in outputs)
    for image, output in zip(images, outputs, strict=True):
        error = np.abs(frames.rgb_to_luma(output) - frames.rgb_to_luma(image)) * 100  # L units
        assert error.mean() < 0.3 and error.max() < 1.0  # uint8 rounding; no gamut clipping
    assert colorizer.colorize_rgb([]) == []


def test_colourful_reference_gives_colourful_output(model):
    grey_input = np.repeat(synthetic_photo()[..., 1:2], 3, axis=2)
    output = Colorizer(model, colorful_still(), FAST).colorize_rgb([grey_input])[0]
    assert chroma(grey_input) < 1.0
    assert chroma(output) > 10.0


def test_colour_input_is_reduced_to_its_luminance(model):
    """Two inputs of (nearly) the same L and different chroma get (nearly) the same colours."""
    photo = synthetic_photo()
    lab = frames.rgb_to_lab(photo)
    lab[..., 1:] *= 0.5
    paler = frames.lab_to_rgb(lab)
    assert np.abs(frames.rgb_to_luma(paler) - frames.rgb_to_luma(photo)).max() < 0.005
    first, second = Colorizer(model, colorful_still(), FAST).colorize_rgb([photo, paler])
    assert np.abs(first.astype(int) - second.astype(int)).mean() < 1.5
    assert np.abs(first.astype(int) - photo.astype(int)).mean() > 10  # colours are not kept


def test_synthetic_self_reference_is_accurate(model):
    photo = synthetic_photo(128, 160)
    grey_psnr = psnr(frames.replace_ab(photo, np.zeros((128, 160, 2), np.float32)), photo)
    output = Colorizer(model, photo).colorize_rgb([photo])[0]
    assert psnr(output, photo) > 30.0 and psnr(output, photo) > grey_psnr + 10.0


def test_real_photo_self_reference_is_accurate(model, sample_ref):
    photo = np.asarray(Image.open(sample_ref).convert("RGB"))
    reference = np.ascontiguousarray(photo[8:-8, ::-1])  # cropped and mirrored
    output = Colorizer(model, reference).colorize_rgb([photo])[0]
    grey = frames.replace_ab(photo, np.zeros((*photo.shape[:2], 2), np.float32))
    assert psnr(output, photo) > 30.0 and psnr(output, photo) > psnr(grey, photo) + 3.0


@pytest.mark.shared
def test_shared_photo_self_reference_is_accurate(model, shared_data):
    path = shared_data / "eval" / "images" / "dreambooth_colorful_sneaker_02.jpg"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    photo = np.asarray(Image.open(path).convert("RGB"))
    reference = np.ascontiguousarray(photo[20:, 10:][:, ::-1])
    output = Colorizer(model, reference).colorize_rgb([photo])[0]
    assert psnr(output, photo) > 28.0
    assert chroma(output) > 0.6 * chroma(photo)


def test_run_keeps_order_and_one_frame_per_frame(model):
    colorizer = Colorizer(model, colorful_still(), dataclasses.replace(FAST, batch_size=2))
    sources = [synthetic_photo(48, 64, seed) for seed in range(5)]
    stream = (Frame(index=i, pts=10 * i, source=s) for i, s in enumerate(sources))
    out = list(colorizer.run(stream))
    assert [f.index for f in out] == list(range(5)) and [f.pts for f in out] == [0, 10, 20, 30, 40]
    for frame, source in zip(out, sources, strict=True):
        assert frame.source is source and frame.color.shape == source.shape
    single = colorizer.step(Frame(index=3, pts=30, source=sources[3]))
    assert np.abs(single.color.astype(int) - out[3].color.astype(int)).max() <= 2
    assert list(colorizer.run(iter([]))) == []


def test_bad_image_is_a_value_error(model):
    colorizer = Colorizer(model, colorful_still(), FAST)
    with pytest.raises(ValueError, match="uint8"):
        colorizer.colorize_rgb([np.zeros((10, 10, 3), np.float32)])


def test_guided_filter_keeps_flat_signals_and_follows_edges():
    guide = np.zeros((32, 32), np.float32)
    guide[:, 16:] = 1.0
    flat = np.full((32, 32, 2), 7.0, np.float32)
    coef = _guided_coefficients(guide, flat, 2, 1e-3)
    np.testing.assert_allclose(coef[..., :2] * guide[..., None] + coef[..., 2:], flat, atol=1e-3)
    blurred_step = np.repeat(np.linspace(-20, 20, 32, dtype=np.float32)[None, :, None], 32, 0)
    blurred_step = np.repeat(blurred_step, 2, axis=2)  # a colour ramp across the luma edge
    coef = _guided_coefficients(guide, blurred_step, 2, 1e-4)
    filtered = coef[..., :2] * guide[..., None] + coef[..., 2:]
    # Steeper than the input ramp at the luma edge: the colour edge snaps to the luma edge.
    step_in = blurred_step[16, 17, 0] - blurred_step[16, 14, 0]
    assert filtered[16, 17, 0] - filtered[16, 14, 0] > step_in


def test_a_carried_slope_gives_the_target_the_references_colour_edge():
    """Guided upsampling with the reference's slope: a flat colour over a luma edge gets a
    sharp colour step at the edge (most of slope x luma step), its own colour elsewhere."""
    guide = np.zeros((32, 32), np.float32)
    guide[:, 16:] = 0.5  # a luma edge
    flat = np.full((32, 32, 2), 10.0, np.float32)  # too smooth to have a colour edge
    slope = np.zeros((32, 32, 2), np.float32)
    slope[..., 0] = 40.0  # ab per unit of luminance: a steps by 20 where luma steps by 0.5

    def filtered(coef: np.ndarray) -> np.ndarray:
        return coef[..., :2] * guide[..., None] + coef[..., 2:]

    window_luma = cv2.blur(guide, (5, 5), borderType=cv2.BORDER_REFLECT)[..., None]
    plain = filtered(_guided_coefficients(guide, flat, 2, 1e-3))
    carried = filtered(_guided_coefficients(
        guide, flat, 2, 1e-3, np.concatenate([slope, window_luma], -1)))
    assert abs(plain[16, 16, 0] - plain[16, 15, 0]) < 1e-3  # no edge to follow
    assert carried[16, 16, 0] - carried[16, 15, 0] > 15.0  # the reference's colour edge
    np.testing.assert_allclose(carried[:, [0, 31]], 10.0, atol=1e-3)  # away from it: its own
    np.testing.assert_allclose(carried[..., 1], 10.0, atol=1e-3)  # b had no slope


def test_carried_reference_lightness_moves_colour_along_the_references_slope():
    """A target patch brighter than the reference window it matched takes the reference's
    colour at that brightness: src + slope x (L - L_ref), not the matched colour unchanged."""
    guide = np.full((32, 32), 0.75, np.float32)  # the target is brighter ...
    flat = np.full((32, 32, 2), 10.0, np.float32)
    carried = np.zeros((32, 32, 3), np.float32)
    carried[..., 0] = 40.0  # ... where a rises with lightness by 40 per unit
    carried[..., 2] = 0.5  # than the reference window it matched
    coef = _guided_coefficients(guide, flat, 2, 1e-3, carried)
    ab = coef[..., :2] * guide[..., None] + coef[..., 2:]
    np.testing.assert_allclose(ab[..., 0], 10.0 + 40.0 * 0.25, atol=1e-3)
    np.testing.assert_allclose(ab[..., 1], 10.0, atol=1e-3)


def test_max_chroma_table_is_the_gamut_boundary():
    table = _max_chroma_table()
    assert table.shape == (101, 361) and table[0].max() < 1.0 and table[100].max() < 1.0
    lightness, hue = np.meshgrid(np.arange(101), np.deg2rad(np.arange(361)), indexing="ij")

    def rgb_at(chroma: np.ndarray) -> np.ndarray:
        lab = np.stack([lightness, chroma * np.cos(hue), chroma * np.sin(hue)], -1)
        return cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)

    inside = rgb_at(table)
    assert inside.min() >= 0.0 and inside.max() <= 1.0
    outside = rgb_at(table + 1.0)[5:96]  # one chroma unit more clips (away from black/white)
    assert ((outside <= 1e-6) | (outside >= 1 - 1e-6)).any(axis=-1).all()


class _OutOfMemoryAbove(torch.nn.Module):
    """The real matcher behind a memory limit: batches above `max_batch` frames raise
    torch.OutOfMemoryError, as a full GPU does. Fault injection: this machine has no GPU."""

    def __init__(self, net: torch.nn.Module, max_batch: int, cuda_only: bool = False) -> None:
        super().__init__()
        self.net, self.config, self.max_batch = net, net.config, max_batch
        self.cuda_only = cuda_only  # the limit applies on the GPU only: the host has room
        self.batches: list[int] = []

    def encode_reference(self, *args, **kwargs):
        return self.net.encode_reference(*args, **kwargs)

    def forward(self, luma: torch.Tensor, reference) -> torch.Tensor:
        self.batches.append(len(luma))
        if len(luma) > self.max_batch and (luma.is_cuda or not self.cuda_only):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(luma, reference)


def test_out_of_memory_halves_the_batch_and_keeps_every_frame_coloured(model, caplog):
    reference = synthetic_photo(seed=1)
    images = [synthetic_photo(seed=s) for s in range(2, 6)]
    opts = dataclasses.replace(FAST, batch_size=4)
    expected = Colorizer(model, reference, opts).colorize_rgb(images)
    limited = _OutOfMemoryAbove(model, max_batch=1)
    colorizer = Colorizer(limited, reference, opts)
    outputs = colorizer.colorize_rgb(images)
    for output, want in zip(outputs, expected, strict=True):
        assert np.abs(output.astype(int) - want.astype(int)).max() <= 1
    assert limited.batches == [4, 2, 1, 1, 2, 1, 1]
    assert colorizer.opts.batch_size == 1  # later batches start small
    assert "out of memory with 4 frames per batch; retrying with 2" in caplog.text


def test_out_of_memory_for_one_frame_on_the_cpu_is_an_error_not_a_grey_frame(model):
    colorizer = Colorizer(_OutOfMemoryAbove(model, max_batch=0), synthetic_photo(seed=1), FAST)
    with pytest.raises(torch.OutOfMemoryError):
        colorizer.colorize_rgb([synthetic_photo(seed=2)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_out_of_memory_for_one_frame_falls_back_to_the_cpu(caplog):
    """On a real GPU: a model that cannot fit one frame moves to the CPU with a warning."""
    gpu_model = load_model("match", device="cuda")
    reference, image = synthetic_photo(seed=1), synthetic_photo(seed=2)
    expected = Colorizer(load_model("match", device="cpu"), reference, FAST).colorize_rgb([image])
    limited = _OutOfMemoryAbove(gpu_model, max_batch=0, cuda_only=True)
    colorizer = Colorizer(limited, reference, FAST)
    [output] = colorizer.colorize_rgb([image])
    assert colorizer.device.type == "cpu"
    assert np.abs(output.astype(int) - expected[0].astype(int)).max() <= 2
    assert "continuing on the CPU" in caplog.text


@pytest.fixture(scope="module")
def net_model():
    return load_model("net", device="cpu")


def test_learned_net_on_a_real_photo_is_accurate_and_colourful(net_model, sample_ref):
    photo = np.asarray(Image.open(sample_ref).convert("RGB"))
    reference = np.ascontiguousarray(photo[8:-8, ::-1])  # cropped and mirrored
    opts = ColorizeOptions(method="net")
    output = Colorizer(net_model, reference, opts).colorize_rgb([photo])[0]
    grey = frames.replace_ab(photo, np.zeros((*photo.shape[:2], 2), np.float32))
    assert output.shape == photo.shape and output.dtype == np.uint8
    assert psnr(output, photo) > 30.0 and psnr(output, photo) > psnr(grey, photo) + 3.0
    assert chroma(output) > 0.6 * chroma(photo)


def test_learned_net_needs_its_own_method(net_model):
    with pytest.raises(OptionsError, match="net"):
        Colorizer(net_model, colorful_still(), FAST)


def test_without_options_the_colorizer_takes_the_models_own_method(net_model):
    colorizer = Colorizer(net_model, colorful_still())
    assert colorizer.opts.method == "net"
    out = colorizer.colorize_rgb([colorful_still()])[0]
    assert out.shape == colorful_still().shape
