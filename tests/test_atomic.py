"""atomic.writing: OUT appears only complete; a failed write leaves neither OUT.partial nor a
changed OUT."""

from __future__ import annotations

import pytest

from vidcolor.atomic import partial_path, writing


def test_a_completed_write_is_renamed_into_place(tmp_path):
    out = tmp_path / "film.mp4"
    with writing(out) as partial:
        assert partial == partial_path(out) == tmp_path / "film.mp4.partial"
        partial.write_text("done")
        assert not out.exists()
    assert out.read_text() == "done" and not partial.exists()


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path, error):
    out = tmp_path / "sheet.png"
    out.write_text("yesterday's")
    with pytest.raises(type(error)), writing(out) as partial:
        partial.write_text("half")
        raise error
    assert out.read_text() == "yesterday's" and not partial_path(out).exists()


def test_a_partial_that_was_never_written_is_no_error(tmp_path):
    out = tmp_path / "report.html"
    with pytest.raises(ValueError, match="first"), writing(out):
        raise ValueError("the first error is the one reported")
    assert list(tmp_path.iterdir()) == []
