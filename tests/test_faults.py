"""Faults mid-run, in a real subprocess: signals and a full disk leave nothing half-written."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time

import pytest

from vidcolor.atomic import partial_path

OUTPUT_LIMIT_BYTES = 40_000  # RLIMIT_FSIZE for the disk-full case: well below the output's size


def start(src, ref, out, **popen):
    """vidcolor in a subprocess that takes SIGINT the way a terminal's foreground job does.

    A child inherits an ignored SIGINT (the tests themselves may run as a background job of a
    non-interactive shell, which ignores it), but a handled one is reset to the default at exec,
    and Python then installs its KeyboardInterrupt handler."""
    command = [sys.executable, "-m", "vidcolor", str(src), "--ref", str(ref), "-o", str(out), "-q"]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, **popen)
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_for_partial(process, out, min_bytes=8_000, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        partial = partial_path(out)
        if partial.exists() and partial.stat().st_size >= min_bytes:
            return
        if process.poll() is not None:
            pytest.fail(f"vidcolor ended early: {process.communicate()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail("the partial output never grew")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_run_removes_partial_output(sample_clip, sample_ref, tmp_path, sig, code):
    out = tmp_path / "film.color.mp4"
    process = start(sample_clip, sample_ref, out)
    wait_for_partial(process, out)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not partial_path(out).exists()


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT_BYTES, OUTPUT_LIMIT_BYTES))


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_and_leaves_nothing(sample_clip, sample_ref, tmp_path):
    out = tmp_path / "film.color.mp4"
    process = start(sample_clip, sample_ref, out, preexec_fn=_limit_file_size)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: ") and str(out) in lines[-1], stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not partial_path(out).exists()
