"""The reel queue, for real: SQLite and Redis backends, worker subprocesses, SIGKILL, resume.

Workers run as `python -m vidcolor queue worker` subprocesses on tiny synthetic reels with a shot
cut, and on films of real photos (a shot each) for several references; jobs are added through
the Python API (so they can use a small working size) or the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import PHOTO_SIZE, moving_bars, photo_shots, write_clip
from PIL import Image
from typer.testing import CliRunner

from vidcolor import io
from vidcolor.batch import ReelQueue, job_id_for
from vidcolor.byproducts import ExtrasRequest
from vidcolor.cli import app, queue_app
from vidcolor.colorize import ColorizeOptions
from vidcolor.encode import EncodeOptions
from vidcolor.errors import QueueError
from vidcolor.frames import rgb_to_lab
from vidcolor.jobfiles import work_dir
from vidcolor.pipeline import PipelineOptions, colorize_video
from vidcolor.provenance import sha256_file, sidecar_path
from vidcolor.references import ReferencePlan
from vidcolor.segments import colorize_segment, join_reel, plan_segments

FAST = PipelineOptions(colorize=ColorizeOptions(work_side_px=64))  # keeps a frame ~30 ms on CPU
WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "VIDCOLOR_DEBUG": "0"}  # 2 shared cores
DONE_LINE = re.compile(r"job (\w+): (seg:\d+) done")
JOINED_LINE = re.compile(r"job (\w+): done, ")
runner = CliRunner()
STARTED: list[subprocess.Popen] = []  # worker processes, killed if a test leaves one behind


@pytest.fixture(autouse=True)
def _no_stray_workers():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def cut_at_12(index: int, width: int, height: int) -> np.ndarray:
    """Moving bars, then a darker, inverted shot from frame 12 on: a hard cut."""
    frame = moving_bars(index, width, height)
    return frame if index < 12 else (255 - frame) // 3


@pytest.fixture(scope="module")
def reel(tmp_path_factory) -> Path:
    """24 frames with a cut at 12, AAC tone: planned as two segments of 12."""
    return write_clip(tmp_path_factory.mktemp("reels") / "reel.mp4", frame_of=cut_at_12)


def copies(reel: Path, folder: Path, count: int) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = [folder / f"reel{i:02d}.mp4" for i in range(count)]
    for path in paths:
        shutil.copyfile(reel, path)
    return paths


def start_worker(url: str, log: Path, *args: str) -> subprocess.Popen:
    with log.open("ab") as sink:
        STARTED.append(subprocess.Popen(
            [sys.executable, "-m", "vidcolor", "queue", "worker", "--queue", url, *args],
            stdout=sink, stderr=sink, env=WORKER_ENV))
    return STARTED[-1]


def kill_after_two_segments(queue, url: str, log: Path, timeout_s: float):
    """Start a worker on the long.mp4 reel, SIGKILL it once two segments are done; returns
    the job's status after the kill."""
    worker = start_worker(url, log, "--keep-segments")
    wait_until(lambda: jobs_by_reel(queue)["long.mp4"].segments_done >= 2, timeout_s,
               "two finished segments")
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    return jobs_by_reel(queue)["long.mp4"]


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def jobs_by_reel(queue: ReelQueue) -> dict[str, object]:
    return {job.reel.name: job for job in queue.status()[0]}


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(container.streams.audio[0]) if p.size]


def assert_same_film(src: Path, out: Path) -> None:
    """Same frames at the same timestamps, and the audio packets byte for byte."""
    assert [f.pts for f in io.read_frames(out)] == [f.pts for f in io.read_frames(src)]
    assert audio_packets(out) == audio_packets(src)


def computed_steps(*logs: Path) -> tuple[Counter, Counter]:
    """How often each (job, segment) was colourised and each job joined, over worker logs."""
    text = "".join(log.read_text() for log in logs)
    return Counter(DONE_LINE.findall(text)), Counter(JOINED_LINE.findall(text))


def test_segments_joined_at_a_cut_equal_one_pass(reel, ref_still, tmp_path):
    """Lossless proof: split at the cut, colourised apart and joined = the one-pass film."""
    opts = PipelineOptions(colorize=ColorizeOptions(work_side_px=64),
                           encode=EncodeOptions(codec="ffv1"))
    one_pass = colorize_video(reel, ref_still, tmp_path / "one.mkv", opts)
    segments = plan_segments(reel, ref_still, tmp_path / "joined.mkv", opts, segment_frames=12)
    assert segments == [(0, 12), (12, 24)]  # the boundary sits on the shot cut
    files = [tmp_path / f"seg{n}.mkv" for n in range(len(segments))]
    for (start, stop), path in zip(segments, files, strict=True):
        assert colorize_segment(reel, ref_still, path, start, stop, opts) == stop - start
    joined = join_reel(reel, files, tmp_path / "joined.mkv", opts)
    assert_same_film(one_pass, joined)
    for a, b in zip(io.read_frames(one_pass), io.read_frames(joined), strict=True):
        assert np.array_equal(a.source, b.source)


def test_mp4_segments_keep_exact_timestamps(reel, ref_still, tmp_path):
    """A segment starting mid-film keeps its source pts in MP4 (no 1/1000 s edit-list rounding)."""
    segment = tmp_path / "late.mp4"
    colorize_segment(reel, ref_still, segment, 12, 24, FAST)
    assert [f.pts for f in io.read_frames(segment)] == [f.pts for f in io.read_frames(reel)][12:]


def test_sqlite_two_workers_six_reels_and_a_failing_one(reel, ref_still, tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    queue = ReelQueue(url)
    reels = copies(reel, tmp_path / "reels", 7)
    for path in reels:
        assert queue.add(path, ref_still, path.with_suffix(".color.mp4"), FAST,
                         segment_frames=12).added
    doomed = reels[-1].with_suffix(".color.mp4")
    doomed.write_bytes(b"appeared after queueing")  # the worker must refuse to clobber it
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [start_worker(url, log, "--once") for log in logs]
    for worker in workers:
        assert worker.wait(timeout=240) == 0, [log.read_text()[-2000:] for log in logs]
    jobs = jobs_by_reel(queue)
    for path in reels[:-1]:
        assert jobs[path.name].state == "done"
        assert_same_film(path, path.with_suffix(".color.mp4"))
        assert not work_dir(path.with_suffix(".color.mp4")).exists()
    failed = jobs[reels[-1].name]
    assert failed.state == "failed" and "already exists" in failed.error
    assert "\n" not in failed.error and doomed.read_bytes() == b"appeared after queueing"
    segments, joins = computed_steps(*logs)
    assert set(segments.values()) == {1} and len(segments) == 12  # 6 reels x 2, none twice
    assert set(joins.values()) == {1} and len(joins) == 6
    assert all("seg:" in log.read_text() for log in logs), "both workers should have worked"


def test_sigkilled_worker_resumes_from_its_last_segment(ref_still, tmp_path):
    long_reel = write_clip(tmp_path / "long.mp4", n_frames=72)
    out = tmp_path / "long.color.mp4"
    url = str(tmp_path / "queue.sqlite3")  # a plain path works as a SQLite URL
    queue = ReelQueue(url)
    opts = PipelineOptions(colorize=ColorizeOptions(work_side_px=128))  # slow enough to catch
    extras = ExtrasRequest(preview=tmp_path / "sheet.jpg", report=tmp_path / "qa.json")
    job_id = queue.add(long_reel, ref_still, out, opts, segment_frames=8, extras=extras).id
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    job = kill_after_two_segments(queue, url, first_log, 120)
    assert job.state == "queued" and job.segments_done < job.segments_total == 9, job
    assert not out.exists()  # nothing half-written under the final name
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in work_dir(out).glob("seg-*.mp4")}
    assert len(finished) >= 2
    second = start_worker(url, second_log, "--once", "--keep-segments")
    assert second.wait(timeout=180) == 0, second_log.read_text()[-2000:]
    assert jobs_by_reel(queue)["long.mp4"].state == "done"
    assert_same_film(long_reel, out)
    for name, identity in finished.items():  # not recomputed: same file, untouched
        path = work_dir(out) / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, name
    log = second_log.read_text()
    assert "left by the stopped worker" in log
    redone = {step for job, step in computed_steps(second_log)[0] if job == job_id}
    assert not redone & {f"seg:{int(name[4:9])}" for name in finished}
    assert len(redone) == 9 - len(finished)
    assert not list(work_dir(out).glob("*.partial"))
    with Image.open(tmp_path / "sheet.jpg") as sheet:  # the resumed reel's by-products
        assert sheet.format == "JPEG" and sheet.width > 6 * 64
    assert json.loads((tmp_path / "qa.json").read_text())["frames"] == 72
    assert not list(tmp_path.glob("*.partial"))


def colourfulness_ab(rgb: np.ndarray) -> float:
    """Mean Lab chroma of an (H, W, 3) uint8 RGB picture: about 0 for grey."""
    return float(np.hypot(*rgb_to_lab(rgb)[..., 1:].transpose(2, 0, 1)).mean())


def test_worker_writes_the_by_products_of_a_joined_reel(reel, ref_still, tmp_path):
    """Sheet, report and side-by-side of a reel made in two segments, from the joined file."""
    url = str(tmp_path / "queue.sqlite3")
    out = tmp_path / "reel.color.mp4"
    sheet, qa, side = tmp_path / "sheet.png", tmp_path / "qa.html", tmp_path / "side.mp4"
    extras = ExtrasRequest(preview=sheet, preview_frames=4, report=qa, compare=side)
    queue = ReelQueue(url)
    job_id = queue.add(reel, ref_still, out, FAST, segment_frames=12, extras=extras).id
    log = tmp_path / "worker.log"
    worker = start_worker(url, log, "--once")
    assert worker.wait(timeout=180) == 0, log.read_text()[-2000:]
    assert jobs_by_reel(queue)["reel.mp4"].state == "done", log.read_text()[-2000:]
    assert computed_steps(log)[0] == Counter({(job_id, "seg:0"): 1, (job_id, "seg:1"): 1})
    assert_same_film(reel, out)

    with Image.open(sheet) as image:
        image.load()  # decodes every pixel
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.width > 4 * 64 > image.height > 2 * 48  # reference + 4 columns, 2 rows

    data = json.loads((tmp_path / "qa.json").read_text())
    assert data["frames"] == 24 and data["cuts"] == [12]
    assert [(s["first_frame"], s["last_frame"]) for s in data["shots"]] == [(0, 11), (12, 23)]
    for shot in data["shots"]:
        assert shot["reference"] == "ref.png" and shot["colourfulness_mean"] > 6.0
        assert shot["flicker_ab_mean"] >= 0.0
    assert data["run"]["output"] == str(out) and data["run"]["model"] == "net"
    assert qa.read_text().startswith("<!DOCTYPE html>")

    sources, colored = list(io.read_frames(reel)), list(io.read_frames(out))
    both = list(io.read_frames(side))
    assert len(both) == 24 and [f.pts for f in both] == [f.pts for f in sources]
    for source, color, pair in zip(sources, colored, both, strict=True):
        assert pair.source.shape == (48, 128, 3)  # twice the reel's width
        left, right = pair.source[:, :64], pair.source[:, 64:]
        assert np.abs(left.astype(int) - source.source).mean() < 4.0  # the input, grey
        # the output, encoded once more at 4:2:0 beside the grey half: close, and as colourful
        assert np.abs(right.astype(int) - color.source).mean() < 8.0
        assert colourfulness_ab(left) < 3.0 < 0.8 * colourfulness_ab(color.source) < \
            colourfulness_ab(right)
    assert audio_packets(side) == audio_packets(reel)

    record = json.loads(sidecar_path(out).read_text())
    assert record["extra_outputs"] == {"compare": str(side), "preview": str(sheet),
                                       "report": str(qa)}
    assert record["output"]["frames"] == 24
    assert not list(tmp_path.glob("*.partial")) and not work_dir(out).exists()


def test_by_products_that_failed_after_the_join_are_made_on_retry(reel, ref_still, tmp_path):
    """The join is kept: a retry makes only the by-products, and none is half-written."""
    url = str(tmp_path / "queue.sqlite3")
    out, sheet, qa = tmp_path / "reel.color.mp4", tmp_path / "sheet.png", tmp_path / "qa.json"
    queue = ReelQueue(url)
    job_id = queue.add(reel, ref_still, out, FAST, segment_frames=12,
                       extras=ExtrasRequest(preview=sheet, report=qa)).id
    blocker = tmp_path / "sheet.png.partial"
    blocker.mkdir()  # the sheet cannot be written, though its path passed every check
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    assert start_worker(url, first_log, "--once").wait(timeout=180) == 0
    job = jobs_by_reel(queue)["reel.mp4"]
    assert job.state == "failed" and "contact sheet" in job.error and "\n" not in job.error
    assert out.exists() and not sheet.exists() and not qa.exists()
    joined = out.stat().st_mtime_ns
    blocker.rmdir()
    assert runner.invoke(queue_app, ["retry", job_id, "--queue", url]).exit_code == 0
    assert start_worker(url, second_log, "--once").wait(timeout=180) == 0
    assert jobs_by_reel(queue)["reel.mp4"].state == "done", second_log.read_text()[-2000:]
    assert out.stat().st_mtime_ns == joined  # not joined again
    assert computed_steps(second_log)[0] == Counter()  # no segment colourised again
    assert "was joined before" in second_log.read_text()
    with Image.open(sheet) as image:
        image.load()
        assert image.format == "PNG"
    assert len(json.loads(qa.read_text())["shots"]) == 2
    assert json.loads(sidecar_path(out).read_text())["extra_outputs"]["preview"] == str(sheet)
    assert not list(tmp_path.glob("*.partial"))


def test_add_checks_by_products_like_colorize(reel, ref_still, tmp_path, tmp_path_factory):
    """Bad by-product paths are refused at `queue add` with colorize's own one-line errors."""
    url = str(tmp_path_factory.mktemp("queue") / "queue.sqlite3")
    (tmp_path / "taken.json").write_text("{}")
    base = [str(reel), "--ref", str(ref_still), "--out", str(tmp_path / "one.mp4")]
    for flag, path, message in (
        ("--preview", "sheet.txt", "needs an image extension"),
        ("--report", "taken.html", "already exists; pass --overwrite"),  # its .json exists
        ("--report", "qa.pdf", ".html"),
        ("--compare", "missing/side.mp4", "does not exist; create it first"),
    ):
        by_product = [flag, str(tmp_path / path)]
        alone = runner.invoke(app, [*base, *by_product])
        queued = runner.invoke(queue_app, ["add", str(reel), "--ref", str(ref_still),
                                           "--out-dir", str(tmp_path), "--queue", url,
                                           *by_product])
        assert alone.exit_code == queued.exit_code == 1, (alone.output, queued.output)
        error = queued.output.strip()
        assert error.startswith("Error: ") and "\n" not in error and message in error
        assert error == alone.output.strip()
    assert ReelQueue(url).status()[0] == []  # nothing was queued
    assert [p.name for p in tmp_path.iterdir()] == ["taken.json"]  # and nothing was written


def test_add_names_by_products_per_reel(reel, ref_still, tmp_path):
    url = str(tmp_path / "queue.sqlite3")
    reels = copies(reel, tmp_path / "reels", 2)
    args = ["add", *map(str, reels), "--ref", str(ref_still), "--queue", url]
    shared = runner.invoke(queue_app, [*args, "--preview", str(tmp_path / "sheet.png")])
    assert shared.exit_code == 2 and "{reel}" in shared.output  # one file for two reels
    added = runner.invoke(queue_app, [*args, "--preview", str(tmp_path / "{reel}.png"),
                                      "--compare", str(tmp_path / "{reel}.side.mkv")])
    assert added.exit_code == 0 and added.output.count(" queued ") == 2, added.output
    (tmp_path / "other").mkdir()
    again = runner.invoke(queue_app, [*args, "--out-dir", str(tmp_path / "other"),
                                      "--preview", str(tmp_path / "{reel}.png")])
    assert again.exit_code == 1  # other outputs, but the same sheets as the queued jobs
    for path in reels:
        assert f"'{tmp_path / path.stem}.png' is already written by job" in again.output
    assert len(ReelQueue(url).status()[0]) == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A private redis-server on 127.0.0.1 with a password, for this module."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    port, password = free_port(), "s3cret-pass"
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    server = start_redis([binary, "--port", str(port), "--requirepass", password,
                          "--dir", str(tmp_path_factory.mktemp("redis"))], url)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def start_redis(args: list[str], url: str) -> subprocess.Popen:
    """Start redis-server with `args` on 127.0.0.1, no persistence; wait until `url` answers.
    Skips the test if the server exits at once (e.g. built without TLS)."""
    server = subprocess.Popen([*args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--loglevel", "warning"],  # little output: the pipe is not read
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def reachable():
        if server.poll() is not None:
            pytest.skip(f"redis-server {args[1:3]} exited: {server.stdout.read()[-200:]}")
        try:
            ReelQueue(url).close()
        except QueueError:
            return False
        return True

    try:
        wait_until(reachable, 20, "redis-server to start", poll_s=0.1)
    except BaseException:
        server.terminate()
        raise
    return server


def test_redis_three_workers_split_reel_then_twelve_reels(redis_url, reel, ref_still, tmp_path):
    queue = ReelQueue(redis_url)
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [start_worker(redis_url, log) for log in logs]
    try:
        wait_until(lambda: len(queue.status()[1]) == 3, 60, "three live workers")
        long_reel = write_clip(tmp_path / "long.mp4", n_frames=48)
        long_out = tmp_path / "long.color.mp4"
        queue.add(long_reel, ref_still, long_out, FAST, segment_frames=8)
        wait_until(lambda: jobs_by_reel(queue)["long.mp4"].state == "done", 120, "the long reel")
        assert_same_film(long_reel, long_out)
        by_worker = Counter()
        for log in logs:
            by_worker[log.name] = len(DONE_LINE.findall(log.read_text()))
        assert sum(by_worker.values()) == 6 and len(+by_worker) >= 2, by_worker

        reels = copies(reel, tmp_path / "reels", 12)
        for path in reels:
            queue.add(path, ref_still, path.with_suffix(".color.mp4"), FAST, segment_frames=12)
        wait_until(lambda: all(jobs_by_reel(queue)[p.name].state == "done" for p in reels), 240,
                   "twelve reels")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    for path in reels:
        assert_same_film(path, path.with_suffix(".color.mp4"))
    segments, joins = computed_steps(*logs)
    assert set(segments.values()) == {1} and len(segments) == 6 + 24
    assert set(joins.values()) == {1} and len(joins) == 13
    assert not queue.status()[1]  # every worker left and said so


def make_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt, ext = (folder / name for name in ("server.key", "server.csr", "server.crt",
                                                      "san.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
         "-keyout", ca_key, "-out", ca_crt],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key,
         "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "1", "-extfile", ext, "-out", crt],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return ca_crt, crt, key


def test_rediss_url_with_a_password_works_over_tls(reel, ref_still, tmp_path):
    binary, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if binary is None or openssl is None:
        pytest.skip("needs redis-server and openssl (apt-get install redis-server openssl)")
    ca_crt, crt, key = make_tls_files(tmp_path)
    port, password = free_port(), "tls-pass"
    url = f"rediss://:{password}@127.0.0.1:{port}/0?ssl_ca_certs={ca_crt}"
    server = start_redis(
        [binary, "--port", "0", "--tls-port", str(port), "--requirepass", password,
         "--tls-cert-file", str(crt), "--tls-key-file", str(key), "--tls-ca-cert-file",
         str(ca_crt), "--tls-auth-clients", "no", "--dir", str(tmp_path)], url)
    try:
        queue = ReelQueue(url)
        job_id = queue.add(reel, ref_still, tmp_path / "out.mp4", FAST).id
        [job] = queue.status()[0]
        assert job.id == job_id and job.state == "queued"
        queue.close()
        wrong_ca = url.replace(str(ca_crt), str(crt))  # not the signer: must be refused
        with pytest.raises(QueueError) as refused:
            ReelQueue(wrong_ca)
        assert password not in str(refused.value)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_unreachable_backend_is_one_line_without_the_password():
    port = free_port()
    result = runner.invoke(queue_app, ["status", "--queue",
                                       f"redis://:hunter2@127.0.0.1:{port}/0"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in lines[0]
    assert f"127.0.0.1:{port}" in lines[0] and "hunter2" not in result.output


def test_add_dedupes_cancels_and_retries(reel, ref_still, tmp_path):
    url = str(tmp_path / "queue.sqlite3")
    args = ["add", str(reel), "--ref", str(ref_still), "--out-dir", str(tmp_path), "--queue", url]
    first = runner.invoke(queue_app, args)
    assert first.exit_code == 0 and " queued " in first.output, first.output
    job_id = first.output.split()[0]
    again = runner.invoke(queue_app, args)
    assert again.exit_code == 0 and "already queued, not queued again" in again.output
    other = runner.invoke(queue_app, [*args, "--no-temporal"])  # other settings: another job
    assert other.exit_code == 1 and "already the target of job" in other.output
    assert runner.invoke(queue_app, ["cancel", job_id[:6], "--queue", url]).exit_code == 0
    status = runner.invoke(queue_app, ["status", "--queue", url])
    assert f"{job_id}  cancelled" in status.output and "1 jobs: 1 cancelled" in status.output
    retried = runner.invoke(queue_app, ["retry", job_id, "--queue", url])
    assert retried.exit_code == 0 and f"{job_id}  queued again" in retried.output
    assert ReelQueue(url).status()[0][0].state == "queued"
    unknown = runner.invoke(queue_app, ["cancel", "zzz", "--queue", url])
    assert unknown.exit_code == 1 and "not in the queue" in unknown.output


def test_inputs_that_are_not_regular_files_are_refused(ref_still, tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    url = str(tmp_path / "queue.sqlite3")
    for source in (fifo, Path("/dev/zero")):
        result = runner.invoke(queue_app, ["add", str(source), "--ref", str(ref_still),
                                           "--out-dir", str(tmp_path), "--queue", url])
        assert result.exit_code == 1 and "is not a regular file" in result.output, result.output


def test_worker_refuses_jobs_outside_its_allowed_folders(reel, ref_still, tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    real = copies(reel, outside, 1)[0]
    (allowed / "link.mp4").symlink_to(real)  # inside by name, outside once resolved
    shutil.copyfile(ref_still, allowed / "ref.png")
    url = str(tmp_path / "queue.sqlite3")
    queue = ReelQueue(url)
    job = queue.add(allowed / "link.mp4", allowed / "ref.png", allowed / "link.color.mp4", FAST)
    log = tmp_path / "worker.log"
    worker = start_worker(url, log, "--once", "--allow-dir", str(allowed))
    assert worker.wait(timeout=120) == 0, log.read_text()[-2000:]
    status = jobs_by_reel(queue)["link.mp4"]
    assert status.id == job.id and status.state == "failed"
    assert "outside this worker's allowed folders" in status.error
    assert not (allowed / "link.color.mp4").exists()


def test_queue_subcommand_keeps_the_main_form(monkeypatch, capsys):
    from vidcolor import cli

    monkeypatch.setattr(sys, "argv", ["vidcolor", "queue", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for command in ("add", "worker", "status", "retry", "cancel"):
        assert command in help_text


# -- several references -------------------------------------------------------------------

SEG_DONE_LINE = re.compile(r"job \w+: seg:\d+ done \(frames (\d+)-(\d+) of")


@pytest.fixture(scope="module")
def coffee_rocket_reel(tmp_path_factory) -> Path:
    """A real two-shot film: 12 frames panning over the coffee photo, then 12 over the rocket."""
    return write_clip(tmp_path_factory.mktemp("photo_reels") / "cups.mp4", n_frames=24,
                      width=PHOTO_SIZE[0], height=PHOTO_SIZE[1],
                      frame_of=photo_shots(("coffee", "rocket"), 12))


def mean_ab(rgb_frames: list[np.ndarray]) -> np.ndarray:
    return np.mean([rgb_to_lab(f)[..., 1:].reshape(-1, 2).mean(0) for f in rgb_frames], axis=0)


def assert_each_shot_has_its_own_colours(out: Path, stills: Path, cut: int) -> None:
    """The shots before and after `cut` are closer in mean ab to coffee and rocket resp."""
    colour = [f.source for f in io.read_frames(out)]
    coffee, rocket = (mean_ab([io.load_still(stills / n)]) for n in ("coffee.png", "rocket.png"))
    for shot, own, other in ((colour[:cut], coffee, rocket), (colour[cut:], rocket, coffee)):
        ab = mean_ab(shot)
        assert np.linalg.norm(ab - own) < np.linalg.norm(ab - other), (ab, own, other)


def logged_plan(log: Path) -> list[str]:
    """The shot lines of the reference plans a worker logged (its mapping-file lines)."""
    return [line for line in log.read_text().splitlines() if "  # shot " in line]


def plan_choices(lines: list[str]) -> list[str]:
    """Each shot's start, still, end and frames, without its scores (rounded in storage)."""
    return [line.split(", score")[0] for line in lines]


def test_segments_with_a_reference_plan_equal_one_pass(coffee_rocket_reel, photo_stills,
                                                       tmp_path):
    """Lossless proof with two stills: the plan made while segmenting, stored as JSON and
    rebuilt, gives each segment the frames of a one-pass run with the same stills."""
    opts = PipelineOptions(colorize=ColorizeOptions(work_side_px=64),
                           encode=EncodeOptions(codec="ffv1"))
    stills = [photo_stills / "coffee.png", photo_stills / "rocket.png"]
    one_pass = colorize_video(coffee_rocket_reel, stills, tmp_path / "one.mkv", opts)
    made = []
    segments = plan_segments(coffee_rocket_reel, stills, tmp_path / "joined.mkv", opts,
                             segment_frames=12, on_plan=made.append)
    assert segments == [(0, 12), (12, 24)]
    [plan] = made
    stored = json.loads(json.dumps(plan.to_dict()))  # as the queue keeps it
    rebuilt = ReferencePlan.from_dict(stored)
    assert rebuilt.to_dict() == stored and rebuilt.used() == plan.used() == [0, 1]
    assert [rebuilt.reference_at(i) for i in (0, 11, 12, 23, 99)] == [0, 0, 1, 1, 1]
    files = [tmp_path / f"seg{n}.mkv" for n in range(len(segments))]
    for (start, stop), path in zip(segments, files, strict=True):
        assert colorize_segment(coffee_rocket_reel, rebuilt, path, start, stop, opts) == 12
    joined = join_reel(coffee_rocket_reel, files, tmp_path / "joined.mkv", opts, ref=rebuilt)
    for a, b in zip(io.read_frames(one_pass), io.read_frames(joined), strict=True):
        assert np.array_equal(a.source, b.source)
    record = json.loads(sidecar_path(joined).read_text())
    assert record["reference_plan"] == stored
    assert [Path(e["path"]).name for e in record["references"]] == ["coffee.png", "rocket.png"]


def test_a_reel_queued_with_a_folder_of_stills_gives_each_shot_its_own(
        coffee_rocket_reel, photo_stills, tmp_path):
    """`queue add --ref FOLDER`: the worker chooses once per reel, the segments (split at the
    cut, the second shot split again) follow the choice, and the outputs record it."""
    url = str(tmp_path / "queue.sqlite3")
    out, qa, sheet = tmp_path / "cups.color.mp4", tmp_path / "qa.json", tmp_path / "sheet.png"
    added = runner.invoke(queue_app, ["add", str(coffee_rocket_reel), "--ref", str(photo_stills),
                                      "--out-dir", str(tmp_path), "--segment-frames", "8",
                                      "--report", str(qa), "--preview", str(sheet),
                                      "--queue", url])
    assert added.exit_code == 0 and " queued " in added.output, added.output
    job_id = added.output.split()[0]
    status = runner.invoke(queue_app, ["status", "--queue", url])
    assert "cups.color.mp4 (3 references)" in status.output, status.output
    log = tmp_path / "worker.log"
    assert start_worker(url, log, "--once").wait(timeout=300) == 0, log.read_text()[-3000:]
    job = jobs_by_reel(ReelQueue(url))["cups.mp4"]
    assert job.state == "done" and job.references_used == 2, log.read_text()[-3000:]
    assert_same_film(coffee_rocket_reel, out)

    text = log.read_text()
    assert text.count(f"job {job_id}: 2 shot(s), 2 of 3 reference(s) used:") == 1
    lines = logged_plan(log)
    assert len(lines) == 2 and "coffee.png" in lines[0] and "rocket.png" in lines[1]
    assert sorted((int(a), int(b)) for a, b in SEG_DONE_LINE.findall(text)) == [
        (0, 11), (12, 19), (20, 23)]  # cut at the shot cut; the rocket shot split in two

    record = json.loads(sidecar_path(out).read_text())
    plan = record["reference_plan"]
    assert [Path(s["reference"]).name for s in plan["shots"]] == ["coffee.png", "rocket.png"]
    assert [(s["first_frame"], s["last_frame"]) for s in plan["shots"]] == [(0, 11), (12, 23)]
    assert plan_choices(ReferencePlan.from_dict(plan).lines()[1:]) == plan_choices(lines)
    used = {Path(e["path"]).name: e["sha256"] for e in record["references"]}
    assert used == {n: sha256_file(photo_stills / n) for n in ("coffee.png", "rocket.png")}
    report = json.loads(qa.read_text())
    assert [s["reference"] for s in report["shots"]] == ["coffee.png", "rocket.png"]
    assert all(0.0 < s["match_confidence_mean"] <= 1.0 for s in report["shots"])
    with Image.open(sheet) as image:
        assert image.width > 6 * PHOTO_SIZE[0]  # both stills beside the frames
    assert_each_shot_has_its_own_colours(out, photo_stills, 12)
    status = runner.invoke(queue_app, ["status", "--queue", url])
    assert "(2 of 3 references)" in status.output, status.output


def test_a_killed_worker_resumes_with_the_same_reference_plan(photo_stills, tmp_path):
    """SIGKILL mid-reel, then cancel and retry (which plans again): the stored plan is kept,
    finished segments are not redone, and every shot still has its own still."""
    reel = write_clip(tmp_path / "long.mp4", n_frames=48, width=PHOTO_SIZE[0],
                      height=PHOTO_SIZE[1], frame_of=photo_shots(("coffee", "rocket"), 24))
    out = tmp_path / "long.color.mp4"
    url = str(tmp_path / "queue.sqlite3")
    queue = ReelQueue(url)
    job_id = queue.add(reel, [photo_stills], out, PipelineOptions(), segment_frames=8).id
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    job = kill_after_two_segments(queue, url, first_log, 180)
    assert job.segments_done < job.segments_total == 6, job
    chosen = logged_plan(first_log)
    assert len(chosen) == 2 and "coffee.png" in chosen[0] and "rocket.png" in chosen[1]
    finished = {p.name: p.stat().st_mtime_ns for p in work_dir(out).glob("seg-*.mp4")}
    queue.cancel(job_id)
    queue.retry(job_id)  # plans the reel again
    second = start_worker(url, second_log, "--once", "--keep-segments")
    assert second.wait(timeout=300) == 0, second_log.read_text()[-3000:]
    assert jobs_by_reel(queue)["long.mp4"].state == "done", second_log.read_text()[-3000:]
    text = second_log.read_text()
    assert f"job {job_id}: keeps its reference plan (2 shot(s))" in text
    assert not logged_plan(second_log)  # no new choice was made
    for name, mtime_ns in finished.items():
        assert (work_dir(out) / name).stat().st_mtime_ns == mtime_ns, name
    redone = {step for job, step in computed_steps(second_log)[0] if job == job_id}
    assert len(redone) == 6 - len(finished)
    plan = json.loads(sidecar_path(out).read_text())["reference_plan"]
    assert plan_choices(ReferencePlan.from_dict(plan).lines()[1:]) == plan_choices(chosen)
    assert_same_film(reel, out)
    assert_each_shot_has_its_own_colours(out, photo_stills, 24)


@pytest.mark.parametrize("text, fragment", [
    ("soon rocket.png\n", "map.txt:1: expected 'START REFERENCE'"),
    ("0 rocket.png\n1.5 nowhere.png\n", "map.txt:2: reference 'nowhere.png' does not exist"),
])
def test_a_bad_reference_map_is_one_line_at_queue_add(reel, photo_stills, tmp_path, text,
                                                      fragment):
    mapping = tmp_path / "map.txt"
    mapping.write_text(text)
    url = str(tmp_path / "queue.sqlite3")
    reels = copies(reel, tmp_path / "reels", 2)
    result = runner.invoke(queue_app, ["add", *map(str, reels), "--ref", str(photo_stills),
                                       "--ref-map", str(mapping), "--queue", url])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0], lines
    alone = runner.invoke(app, [str(reels[0]), "--ref", str(photo_stills), "--ref-map",
                                str(mapping), "-q"])
    assert alone.exit_code == 1 and alone.output.strip() == lines[0]
    assert ReelQueue(url).status()[0] == []


def test_single_reference_jobs_keep_their_ids(reel, ref_still, photo_stills, tmp_path):
    """Queues made before several references could be given stay valid."""
    out = tmp_path / "reel.color.mp4"
    identity = {"reel": str(reel.resolve()), "ref": str(ref_still.resolve()),
                "out": str(out.resolve()),
                "options": dataclasses.asdict(dataclasses.replace(FAST, overwrite=False))}
    before = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    queue = ReelQueue(str(tmp_path / "queue.sqlite3"))
    assert queue.add(reel, ref_still, out, FAST).id == before.hexdigest()[:10]
    assert job_id_for(reel, [ref_still], out, FAST) == before.hexdigest()[:10]
    one = tmp_path / "one"  # a folder of one still is that still
    one.mkdir()
    shutil.copyfile(ref_still, one / "ref.png")
    other_queue = ReelQueue(str(tmp_path / "other.sqlite3"))
    assert other_queue.add(reel, one, out, FAST).id == job_id_for(reel, one / "ref.png", out,
                                                                  FAST)
    several = job_id_for(reel, [photo_stills / "coffee.png", photo_stills / "rocket.png"], out,
                         FAST)
    mapping = tmp_path / "map.txt"
    mapping.write_text("0 coffee.png\n")
    mapped = job_id_for(reel, [photo_stills / "coffee.png"], out, FAST, ref_map=mapping)
    mapping.write_text("0 rocket.png\n")
    remapped = job_id_for(reel, [photo_stills / "coffee.png"], out, FAST, ref_map=mapping)
    assert len({before.hexdigest()[:10], several, mapped, remapped}) == 4


def test_worker_refuses_a_map_that_names_a_still_outside_its_folders(reel, photo_stills,
                                                                     tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    shutil.copyfile(photo_stills / "coffee.png", allowed / "coffee.png")
    mapping = allowed / "map.txt"
    mapping.write_text(f"0 coffee.png\n0.3 {photo_stills / 'rocket.png'}\n")
    url = str(tmp_path / "queue.sqlite3")
    queue = ReelQueue(url)
    queue.add(copies(reel, allowed, 1)[0], [allowed / "coffee.png"], allowed / "out.mp4", FAST,
              ref_map=mapping)
    log = tmp_path / "worker.log"
    worker = start_worker(url, log, "--once", "--allow-dir", str(allowed))
    assert worker.wait(timeout=120) == 0, log.read_text()[-2000:]
    [job] = queue.status()[0]
    assert job.state == "failed" and job.references == 1 and job.references_used is None
    assert f"The reference '{photo_stills / 'rocket.png'}' lies outside" in job.error
    assert not (allowed / "out.mp4").exists()
