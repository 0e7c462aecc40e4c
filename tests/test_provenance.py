"""Provenance: the OUT.vidcolor.json sidecar and the container tag, on real runs of small clips."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import av
import pytest
from PIL import Image

import vidcolor
from vidcolor import __version__
from vidcolor.atomic import partial_path
from vidcolor.encode import VideoWriter
from vidcolor.errors import EncodeError
from vidcolor.pipeline import PipelineOptions
from vidcolor.provenance import TAG_KEY, describe_media, sidecar_path
from vidcolor.temporal import TemporalOptions
from vidcolor.weights import BACKBONE_SHA256, backbone_weights_path, shipped_weights_path


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def container_tags(path):
    with av.open(str(path)) as container:
        return {key.lower(): value for key, value in container.metadata.items()}


@pytest.fixture(scope="module")
def run(gray_clip, ref_still, tmp_path_factory):
    out = tmp_path_factory.mktemp("provenance") / "gray.color.mp4"
    opts = PipelineOptions(temporal=TemporalOptions(strength=0.5))
    vidcolor.colorize_video(gray_clip, ref_still, out, opts)
    return out, opts, json.loads(sidecar_path(out).read_text())


def test_sidecar_sits_beside_the_output(run):
    out, _, _ = run
    assert sidecar_path(out) == out.with_name("gray.color.mp4.vidcolor.json")
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, sidecar_path(out).name]


def test_sidecar_hashes_match_the_files(run, gray_clip, ref_still):
    out, _, record = run
    assert record["input"]["sha256"] == sha256(gray_clip)
    assert record["reference"]["sha256"] == sha256(ref_still)
    assert record["output"]["sha256"] == sha256(out)
    assert record["output"]["size_bytes"] == out.stat().st_size
    net, backbone = record["model"]["weights"]  # the default learned net runs on the backbone
    assert net["role"] == "net" and net["sha256"] == sha256(shipped_weights_path("net")[0])
    assert backbone["role"] == "backbone"
    assert backbone["sha256"] == BACKBONE_SHA256 == sha256(backbone_weights_path())


def test_sidecar_records_settings_versions_layout_and_times(run, gray_clip):
    _, opts, record = run
    assert record["vidcolor"] == __version__
    assert record["model"]["name"] == "net"
    assert record["settings"] == dataclasses.asdict(opts)
    assert PipelineOptions.from_dict(record["settings"]) == opts
    assert record["output"]["frames"] == 24
    streams = record["input"]["layout"]["streams"]
    assert [s["type"] for s in streams] == ["video", "audio"]
    assert streams[0]["index"] == 0 and streams[0]["codec"] == "h264"
    assert (streams[0]["width"], streams[0]["height"], streams[0]["fps"]) == (64, 48, "24000/1001")
    assert streams[0]["frames"] == 24
    assert (streams[1]["codec"], streams[1]["sample_rate"]) == ("aac", 48000)
    started = dt.datetime.fromisoformat(record["started_utc"])
    finished = dt.datetime.fromisoformat(record["finished_utc"])
    assert started <= finished and started.tzinfo is not None
    assert record["software"]["torch"] and record["software"]["av"]


def test_metadata_tag_is_readable_with_pyav(run, ref_still):
    out, _, record = run
    tag = container_tags(out)[TAG_KEY]
    assert tag.startswith(f"vidcolor {__version__}; model net")
    assert sha256(ref_still) in tag
    assert record["output"]["metadata"][TAG_KEY] == tag


def test_matroska_output_carries_the_tag(silent_clip, ref_still, tmp_path):
    out = vidcolor.colorize_video(silent_clip, ref_still, tmp_path / "silent.mkv",
                                  PipelineOptions(temporal=TemporalOptions(strength=0.0)))
    assert sha256(ref_still) in container_tags(out)[TAG_KEY]
    record = json.loads(sidecar_path(out).read_text())
    assert record["output"]["sha256"] == sha256(out)
    assert [s["type"] for s in record["input"]["layout"]["streams"]] == ["video"]


def test_still_gets_a_sidecar_and_a_png_comment(ref_still, tmp_path):
    from conftest import moving_bars

    photo = tmp_path / "photo.png"
    Image.fromarray(moving_bars(0, 80, 60)).save(photo)
    out = vidcolor.colorize_video(photo, ref_still, tmp_path / "photo.color.png")
    with Image.open(out) as image:
        assert sha256(ref_still) in image.text["Comment"]
    record = json.loads(sidecar_path(out).read_text())
    assert record["output"]["frames"] == 1
    assert record["input"]["sha256"] == sha256(photo)
    assert record["output"]["sha256"] == sha256(out)


def test_no_sidecar_when_the_run_fails(gray_clip, ref_still, tmp_path, monkeypatch):
    write = VideoWriter.write

    def fail_at_frame_10(self, frame):  # a disk filling up mid-run
        if frame.index == 10:
            raise EncodeError("No space left on device (simulated)")
        write(self, frame)

    monkeypatch.setattr(VideoWriter, "write", fail_at_frame_10)
    out = tmp_path / "out.mp4"
    with pytest.raises(EncodeError, match="No space"):
        vidcolor.colorize_video(gray_clip, ref_still, out, preview=tmp_path / "sheet.png",
                                report=tmp_path / "report.html")
    assert list(tmp_path.iterdir()) == []
    assert not out.exists() and not partial_path(out).exists()


def test_describe_media_of_a_non_media_file_is_empty(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not media")
    assert describe_media(notes) == {"format": None, "duration_s": None, "bit_rate": None,
                                     "streams": []}


def test_a_reel_joined_from_segments_gets_the_tag_and_sidecar(gray_clip, ref_still, tmp_path):
    from vidcolor.segments import colorize_segment, join_reel, plan_segments

    out = tmp_path / "joined.mp4"
    opts = PipelineOptions(temporal=TemporalOptions(strength=0.0))
    segments = plan_segments(gray_clip, ref_still, out, opts, segment_frames=12)
    files = [tmp_path / f"seg{n}.mp4" for n in range(len(segments))]
    for (start, stop), path in zip(segments, files, strict=True):
        colorize_segment(gray_clip, ref_still, path, start, stop, opts)
    assert not sidecar_path(files[0]).exists()  # segments are work files, not outputs
    join_reel(gray_clip, files, out, opts, ref=ref_still)
    record = json.loads(sidecar_path(out).read_text())
    assert record["output"]["sha256"] == sha256(out) and record["output"]["frames"] == 24
    assert record["reference"]["sha256"] == sha256(ref_still)
    assert record["settings"] == dataclasses.asdict(opts)
    assert sha256(ref_still) in container_tags(out)[TAG_KEY]
