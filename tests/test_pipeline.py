"""End to end on the real sample film: timing, sound, luma and colour all survive."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
import torch
from PIL import Image

import vidcolor
from vidcolor import io
from vidcolor.atomic import partial_path
from vidcolor.colorize import Colorizer, _to_device
from vidcolor.encode import EncodeOptions, VideoWriter
from vidcolor.errors import EncodeError, OptionsError, ReferenceImageError, VideoOpenError
from vidcolor.frames import rgb_to_lab
from vidcolor.pipeline import PipelineOptions, preset_options
from vidcolor.temporal import TemporalFilter
from vidcolor.threads import in_thread


def audio_packets(path):
    with av.open(str(path)) as container:
        return [[bytes(p) for p in container.demux(s) if p.size] for s in container.streams.audio]


def lumas(path):
    return np.stack([f.luma_plane for f in io.read_frames(path)]).astype(np.float64)


def mean_chroma(path, every=10):
    values = [np.hypot(*rgb_to_lab(f.source)[..., 1:].transpose(2, 0, 1)).mean()
              for f in io.read_frames(path) if f.index % every == 0]
    return float(np.mean(values))


@pytest.fixture(scope="module")
def sample_output(sample_clip, sample_ref, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "film.color.mp4"
    return vidcolor.colorize_video(sample_clip, sample_ref, out)


@pytest.mark.slow
def test_frame_count_and_timestamps_are_the_inputs(sample_clip, sample_output):
    source = [f.pts for f in io.read_frames(sample_clip)]
    assert [f.pts for f in io.read_frames(sample_output)] == source
    assert io.probe(sample_output).time_base == io.probe(sample_clip).time_base
    assert not partial_path(sample_output).exists()


@pytest.mark.slow
def test_audio_packets_are_byte_identical(sample_clip, sample_output):
    packets = audio_packets(sample_output)
    assert packets == audio_packets(sample_clip) and len(packets[0]) > 100


@pytest.mark.slow
def test_luma_survives_default_h264(sample_clip, sample_output):
    mse = np.mean((lumas(sample_output) - lumas(sample_clip)) ** 2)
    assert 10 * np.log10(255.0**2 / mse) >= 40.0


@pytest.mark.slow
def test_output_is_visibly_coloured(sample_clip, sample_output):
    grey, colour = mean_chroma(sample_clip), mean_chroma(sample_output)
    assert grey < 2.0 and colour > grey + 6.0


@pytest.mark.slow
def test_ffv1_luma_is_bit_exact(sample_clip, sample_ref, tmp_path):
    short = tmp_path / "short.mkv"
    with av.open(str(sample_clip)) as src, av.open(str(short), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.pts is not None and packet.pts * packet.time_base > 1.2:
                break
            packet.stream = stream
            dst.mux(packet)
    out = vidcolor.colorize_video(short, sample_ref, tmp_path / "exact.mkv",
                                  PipelineOptions(encode=EncodeOptions(codec="ffv1")))
    assert np.array_equal(lumas(out), lumas(short))


def test_image_in_image_out(sample_ref, tmp_path):
    photo = tmp_path / "photo.png"
    grey = np.asarray(Image.open(sample_ref).convert("L"))
    Image.fromarray(grey).save(photo)
    out = vidcolor.colorize_video(photo, sample_ref, tmp_path / "photo.color.jpg")
    colored = np.asarray(Image.open(out).convert("RGB"))
    assert colored.shape == (*grey.shape, 3)
    assert np.hypot(*rgb_to_lab(colored)[..., 1:].transpose(2, 0, 1)).mean() > 8


def test_colorize_image_keeps_lightness(sample_ref):
    reference = io.load_still(sample_ref)
    target = np.repeat(np.asarray(Image.fromarray(reference).convert("L"))[..., None], 3, axis=2)
    colored = vidcolor.colorize_image(target, reference)
    assert colored.shape == target.shape and colored.dtype == np.uint8
    assert np.abs(rgb_to_lab(colored)[..., 0] - rgb_to_lab(target)[..., 0]).mean() < 1.0
    assert np.hypot(*rgb_to_lab(colored)[..., 1:].transpose(2, 0, 1)).mean() > 8


def test_reusable_colorizer_api(sample_ref):
    model = vidcolor.load_model("match")
    colorizer = vidcolor.Colorizer(model, io.load_still(sample_ref))
    frames = [np.full((40, 60, 3), v, np.uint8) for v in (60, 120, 200)]
    assert [c.shape for c in colorizer.colorize_rgb(frames)] == [(40, 60, 3)] * 3


def test_user_mistakes_fail_before_any_output(gray_clip, ref_still, tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(ReferenceImageError):
        vidcolor.colorize_video(gray_clip, tmp_path / "missing.png", out)
    not_media = tmp_path / "notes.mp4"
    not_media.write_text("not a video " * 50)
    with pytest.raises(VideoOpenError):
        vidcolor.colorize_video(not_media, ref_still, out)
    out.write_bytes(b"keep me")
    with pytest.raises(EncodeError):
        vidcolor.colorize_video(gray_clip, ref_still, out)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4", "out.mp4"]


def test_single_frame_film(media_dir, ref_still, tmp_path):
    from conftest import write_clip

    src = write_clip(media_dir / "one.mp4", n_frames=1)
    out = vidcolor.colorize_video(src, ref_still, tmp_path / "one.color.mp4")
    assert len(list(io.read_frames(out))) == 1
    assert audio_packets(out) == audio_packets(src)


@pytest.mark.slow
def test_4k_input_works(media_dir, ref_still, tmp_path):
    from conftest import write_clip

    src = write_clip(media_dir / "uhd.mp4", n_frames=3, width=3840, height=2160, audio=False)
    out = vidcolor.colorize_video(src, ref_still, tmp_path / "uhd.color.mp4")
    info = io.probe(out)
    assert (info.width, info.height) == (3840, 2160) and len(list(io.read_frames(out))) == 3


def test_colour_input_is_noted_once(media_dir, ref_still, tmp_path, caplog):
    from conftest import colorful_still, write_clip

    src = write_clip(media_dir / "colour.mp4", n_frames=4, audio=False,
                     frame_of=lambda i, w, h: colorful_still(w, h))
    vidcolor.colorize_video(src, ref_still, tmp_path / "recolour.mp4")
    assert caplog.text.count("already in colour") == 1


def test_unwritable_output_folder_fails_before_work(gray_clip, ref_still):
    with pytest.raises(EncodeError, match="not writable|does not exist"):
        vidcolor.colorize_video(gray_clip, ref_still, "/proc/vidcolor-test/out.mp4")
    with pytest.raises(EncodeError, match="not writable"):
        vidcolor.colorize_video(gray_clip, ref_still, "/proc/out.mp4")


@pytest.mark.parametrize("kind", ["tiny", "cmyk"])
def test_reference_edge_cases(gray_clip, tmp_path, kind):
    from conftest import colorful_still

    still = tmp_path / f"{kind}.jpg"
    if kind == "tiny":
        Image.fromarray(colorful_still(20, 16)).save(still)
        with pytest.raises(ReferenceImageError, match="px"):
            vidcolor.colorize_video(gray_clip, still, tmp_path / "out.mp4")
        assert not (tmp_path / "out.mp4").exists()
    else:
        Image.fromarray(colorful_still()).convert("CMYK").save(still)
        out = vidcolor.colorize_video(gray_clip, still, tmp_path / "out.mp4")
        assert mean_chroma(out, every=6) > 5


# Speed and scale (issue 7): stages in threads, presets, the GPU path.

class StageFailure(RuntimeError):
    """Raised on purpose inside one stage."""


def _stage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("vidcolor-") and t.is_alive()]


def _fail_at_frame(monkeypatch, stage):
    """Make one real stage raise StageFailure at frame 5 (the others run unchanged)."""
    owner, name = {"colorize": (Colorizer, "_colorize_frames"),
                   "temporal": (TemporalFilter, "step"), "encode": (VideoWriter, "write")}[stage]
    real = getattr(owner, name)

    def failing(self, item):
        items = item if isinstance(item, list) else [item]
        if any(frame.index == 5 for frame in items):
            raise StageFailure(f"{stage} failed at frame 5")
        return real(self, item)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize("stage", ["colorize", "temporal", "encode"])
def test_an_error_in_any_stage_surfaces_and_stops_every_thread(gray_clip, ref_still, tmp_path,
                                                               monkeypatch, stage):
    _fail_at_frame(monkeypatch, stage)
    out = tmp_path / "out.mp4"
    with pytest.raises(StageFailure, match=f"{stage} failed at frame 5"):
        vidcolor.colorize_video(gray_clip, ref_still, out)
    assert _stage_threads() == []
    assert not out.exists() and not partial_path(out).exists()


def test_threaded_stages_keep_order_count_and_pts(vfr_clip, ref_still, tmp_path):
    out = vidcolor.colorize_video(vfr_clip, ref_still, tmp_path / "vfr.mkv",
                                  preset_options("fast"))
    assert [f.pts for f in io.read_frames(out)] == [f.pts for f in io.read_frames(vfr_clip)]
    assert _stage_threads() == []


def test_a_stage_thread_keeps_order_and_stops_when_closed():
    def slow_numbers():
        for i in range(1000):
            time.sleep(0.001 * (i % 3))
            yield i

    assert list(in_thread(iter, iter(range(50)), 2, "vidcolor-test")) == list(range(50))
    stream = in_thread(iter, slow_numbers(), 2, "vidcolor-test")
    assert [next(stream) for _ in range(10)] == list(range(10))
    stream.close()
    assert _stage_threads() == []


@pytest.mark.parametrize("preset", ["fast", "best"])
def test_presets_give_valid_output(gray_clip, ref_still, tmp_path, preset):
    out = vidcolor.colorize_video(gray_clip, ref_still, tmp_path / f"{preset}.mp4",
                                  preset_options(preset))
    assert [f.pts for f in io.read_frames(out)] == [f.pts for f in io.read_frames(gray_clip)]
    assert mean_chroma(out, every=6) > 5
    assert audio_packets(out) == audio_packets(gray_clip)


def test_preset_options():
    assert preset_options("balanced") == PipelineOptions()
    fast, best = preset_options("fast"), preset_options("best")
    assert fast.colorize.work_side_px < PipelineOptions().colorize.work_side_px
    assert best.temporal.solver_iterations > PipelineOptions().temporal.solver_iterations
    assert fast.encode.preset == "veryfast" and preset_options("fast", device="cpu").device == "cpu"
    with pytest.raises(OptionsError, match="fast"):
        preset_options("medium")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_batches_with_autocast_match_the_cpu(sample_ref):
    reference = io.load_still(sample_ref)
    frames = [np.asarray(Image.fromarray(reference).convert("L").convert("RGB"))] * 6
    opts = vidcolor.ColorizeOptions(batch_size=3)
    on_gpu = vidcolor.Colorizer(vidcolor.load_model("match", device="cuda"), reference, opts)
    on_cpu = vidcolor.Colorizer(vidcolor.load_model("match", device="cpu"), reference, opts)
    gpu_ab = rgb_to_lab(np.stack(on_gpu.colorize_rgb(frames)))[..., 1:]
    cpu_ab = rgb_to_lab(np.stack(on_cpu.colorize_rgb(frames)))[..., 1:]
    assert np.abs(gpu_ab - cpu_ab).mean() < 1.0  # float16 autocast: well under one ab unit
    assert _to_device(np.zeros((2, 8, 8), np.float32), torch.device("cuda")).is_cuda


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_film_end_to_end(gray_clip, ref_still, tmp_path):
    out = vidcolor.colorize_video(gray_clip, ref_still, tmp_path / "gpu.mp4",
                                  PipelineOptions(device="cuda"))
    assert [f.pts for f in io.read_frames(out)] == [f.pts for f in io.read_frames(gray_clip)]
    assert mean_chroma(out, every=6) > 5


def test_a_rotated_film_is_colourised_upright(sample_ref, media_dir, tmp_path):
    """A film stored sideways (a phone's portrait clip: display rotation 90) is colourised as
    it is shown, upright like its reference: its output is the upright film's, turned."""
    from conftest import block_means, write_clip

    reference = np.asarray(Image.open(sample_ref).convert("RGB"))
    photo = np.asarray(Image.fromarray(reference).resize((320, 192)))
    grey = np.repeat(photo.mean(-1, keepdims=True).astype(np.uint8), 3, -1)  # (192, 320) shown
    sideways = np.ascontiguousarray(np.rot90(grey, -1))  # (320, 192) stored; rot90(, 1) shows it
    model = vidcolor.load_model("net")
    upright_colours = Colorizer(model, reference).colorize_rgb([grey])[0]
    turned = Colorizer(model, reference, upright_turns=1).colorize_rgb([sideways])[0]
    np.testing.assert_array_equal(np.rot90(turned, 1), upright_colours)  # exactly
    as_stored = np.rot90(Colorizer(model, reference).colorize_rgb([sideways])[0], 1)

    # The pipeline passes the film's rotation on: compared on 16 x 16 px block means (the
    # encoder's 4:2:0 chroma and rounding differ between the two orientations).
    upright_clip = write_clip(media_dir / "upright.mp4", n_frames=3, width=320, height=192,
                              audio=False, frame_of=lambda i, w, h: grey)
    rotated_clip = write_clip(media_dir / "sideways.mp4", n_frames=3, width=192, height=320,
                              audio=False, frame_of=lambda i, w, h: sideways, rotation_deg=90)
    upright = vidcolor.colorize_video(upright_clip, sample_ref, tmp_path / "upright.mp4")
    rotated = vidcolor.colorize_video(rotated_clip, sample_ref, tmp_path / "sideways.mp4")
    assert io.probe(rotated).rotation_deg == 90

    expected = block_means(next(io.read_frames(upright)).source, 16)
    shown = block_means(np.rot90(next(io.read_frames(rotated)).source, 1), 16)
    error = np.abs(shown - expected).mean()  # 0.7 here
    assert error < 0.25 * np.abs(block_means(as_stored, 16) - expected).mean()  # 7.4 here
