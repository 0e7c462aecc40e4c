"""scripts/bench.py --compare: each model's colorize stage timed in turn, read as a ratio to
the first (on a shared machine only the ratio survives the drift)."""

from __future__ import annotations

import sys

import pytest
from conftest import load_script

from vidcolor.weights import load_model, save_checkpoint


def test_compare_times_each_model_and_its_ratio_to_the_first(monkeypatch, capsys, tmp_path):
    bench = load_script(monkeypatch, "bench")
    checkpoint = save_checkpoint(load_model("net", device="cpu"), tmp_path / "net_copy.pt")
    models = ["net", str(checkpoint), "match"]
    monkeypatch.setattr(sys, "argv", ["bench.py", "--compare", ",".join(models), "--rounds",
                                      "2", "--frames", "6", "--sizes", "480p",
                                      "--presets", "fast"])
    assert bench.main() == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    assert "480p fast: colorize ms/frame over 2 rounds of 6 frames" in lines[header - 1]
    rows = [line.split() for line in lines[header + 1:header + 4]]
    assert [row[0] for row in rows] == models
    for _, median, low, high, ratio in rows:
        assert 0 < float(low) <= float(median) <= float(high)
        assert float(ratio) > 0
    assert rows[0][4] == "1.000"
    assert float(rows[0][1]) * float(rows[1][4]) == pytest.approx(float(rows[1][1]), rel=0.01)


def test_compare_with_no_such_model_is_one_line(monkeypatch, capsys, tmp_path):
    bench = load_script(monkeypatch, "bench")
    missing = tmp_path / "missing.pt"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--compare", f"net,{missing}"])
    assert bench.main() == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("bench.py --compare: ") and str(missing) in error
