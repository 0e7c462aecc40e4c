"""Session fixtures: small synthetic media written with PyAV, and paths to real samples."""

from __future__ import annotations

import functools
import importlib.util
import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
SHARED_DATA = ROOT.parent / "shared" / "data"
SCRIPTS = ROOT / "scripts"


def load_script(monkeypatch: pytest.MonkeyPatch, name: str):
    """scripts/NAME.py as a module, with scripts/ on the path for its neighbours."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def moving_bars(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 grey picture of diagonal bars that move 2 px per frame."""
    y, x = np.mgrid[0:height, 0:width]
    stripes = ((x + y + 2 * index) // 8) % 2
    gray = (60 + 120 * stripes + (x * 40) // max(width, 1)).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def write_clip(path: Path, *, n_frames: int = 24, width: int = 64, height: int = 48,
               rate: Fraction = Fraction(24000, 1001), audio: bool = True, pix_fmt: str = "yuv420p",
               codec: str = "libx264", pts_of=None, frame_of=moving_bars,
               audio_codec: str = "aac", rotation_deg: int = 0, audio_tracks: int = 1,
               sample_aspect: Fraction | None = None, interlaced: bool = False) -> Path:
    """Write a real clip with PyAV: moving bars, optional tone, optional custom timestamps."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        if rotation_deg:
            video.set_display_rotation(rotation_deg)
        if sample_aspect is not None:
            video.codec_context.sample_aspect_ratio = sample_aspect
        if interlaced:
            video.codec_context.flags |= av.codec.context.Flags.interlaced_dct
            video.codec_context.field_order = 2  # AV_FIELD_TT: top field first
        if pts_of is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        sounds = []
        for _ in range(audio_tracks if audio else 0):
            sounds.append(container.add_stream(audio_codec, rate=48000))
            sounds[-1].layout = "stereo"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_of(i, width, height), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            if pts_of is not None:
                frame.pts, frame.time_base = pts_of(i), Fraction(1, 1000)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        for sound in sounds:
            _write_tone(container, sound, n_frames / float(rate))
    return path


def _write_tone(container, stream, duration_s: float) -> None:
    samples_per_frame = 1024
    total = int(duration_s * 48000)
    t = np.arange(total) / 48000.0
    tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sample_format = stream.codec_context.codec.audio_formats[0].name
    for start in range(0, total, samples_per_frame):
        chunk = tone[start:start + samples_per_frame]
        planar = np.stack([chunk, chunk])
        if sample_format == "s16":
            planar = (planar * 32767).astype(np.int16).T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format=sample_format,
                                           layout="stereo")
        frame.sample_rate, frame.pts = 48000, start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def block_means(rgb: np.ndarray, side: int) -> np.ndarray:
    """Means of side x side pixel blocks of an (H, W, 3) image, float (a partial last block
    is left out): colours at a scale that chroma subsampling and lossy coding keep."""
    rows, cols = rgb.shape[0] // side, rgb.shape[1] // side
    blocks = rgb[: side * rows, : side * cols].astype(float).reshape(rows, side, cols, side, 3)
    return blocks.mean((1, 3))


def colorful_still(width: int = 96, height: int = 72) -> np.ndarray:
    """(H, W, 3) uint8 RGB with strong, varied colour: a reference for synthetic tests."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([
        (255 * x / width), (255 * y / height), 255 - 255 * x / width,
    ], axis=-1)
    return rgb.astype(np.uint8)


GALLERY_STILLS = ROOT / "vidcolor" / "gallery_stills"
PHOTO_SIZE = (160, 120)  # width, height of the films made of gallery photos


@functools.lru_cache(maxsize=8)
def gallery_photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the gallery's public-domain scikit-image photo `name`."""
    from PIL import Image

    with Image.open(GALLERY_STILLS / f"skimage_{name}.jpg") as image:
        return np.asarray(image.convert("RGB"))


def panned_view(rgb: np.ndarray, index: int) -> np.ndarray:
    """A PHOTO_SIZE view of `rgb` panning 2 px per frame: a shot with motion, up to ~35 frames."""
    from PIL import Image

    height = rgb.shape[0] - 8
    width = round(height * PHOTO_SIZE[0] / PHOTO_SIZE[1])
    view = rgb[4 : 4 + height, 2 * index : 2 * index + width]
    return np.asarray(Image.fromarray(view).resize(PHOTO_SIZE, Image.Resampling.LANCZOS))


def photo_shots(names: tuple[str, ...], shot_frames: int):
    """A `write_clip` frame_of: a grey film whose k-th shot of `shot_frames` pans over photo
    names[k], so the right reference of each shot is known by construction."""

    def frame_of(index: int, width: int, height: int) -> np.ndarray:
        from PIL import Image

        rgb = panned_view(gallery_photo(names[index // shot_frames]), index % shot_frames)
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        return np.repeat(grey[..., None], 3, axis=2)

    return frame_of


@pytest.fixture(scope="session")
def photo_stills(tmp_path_factory) -> Path:
    """A folder of three colour references: other views of coffee and rocket, and a distractor."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("photo_stills")
    for name, crop in (("rocket", np.s_[10:, ::-1]), ("chelsea", np.s_[:, :]),
                       ("coffee", np.s_[10:, 30:])):
        still = np.ascontiguousarray(gallery_photo(name)[crop])
        Image.fromarray(still).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def gray_clip(media_dir) -> Path:
    """24 frames, 64x48, moving bars, 24000/1001 fps, AAC tone."""
    return write_clip(media_dir / "gray.mp4")


@pytest.fixture(scope="session")
def silent_clip(media_dir) -> Path:
    return write_clip(media_dir / "silent.mp4", audio=False, n_frames=12)


@pytest.fixture(scope="session")
def vfr_clip(media_dir) -> Path:
    """Variable frame rate: gaps of 40 ms and 80 ms alternate (time base 1/1000)."""
    stamps = np.cumsum([0] + [40 if i % 2 else 80 for i in range(15)])
    return write_clip(media_dir / "vfr.mkv", n_frames=16, audio=False,
                      pts_of=lambda i: int(stamps[i]))


@pytest.fixture(scope="session")
def ref_still(media_dir) -> Path:
    from PIL import Image

    path = media_dir / "ref.png"
    Image.fromarray(colorful_still()).save(path)
    return path


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    path = SAMPLES / "film.mp4"
    if not path.exists():
        pytest.skip("samples/film.mp4 is missing from this checkout")
    return path


@pytest.fixture(scope="session")
def sample_ref() -> Path:
    path = SAMPLES / "ref.jpg"
    if not path.exists():
        pytest.skip("samples/ref.jpg is missing from this checkout")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the real-media benchmarks live there")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_unexpected_errors(caplog):
    """Fail a test that logs at ERROR without clearing caplog (a hidden failure).

    The CLI sets the "vidcolor" logger's level for its run (`-q` = ERROR); restoring it keeps
    later tests' caplog seeing the warnings they check, whatever the test order.
    """
    package_logger = logging.getLogger("vidcolor")
    level = package_logger.level
    yield
    package_logger.setLevel(level)
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, f"unexpected ERROR log records: {[r.getMessage() for r in errors]}"
