"""scripts/train.py's refusal of a missing data folder (the rest needs ../shared/data/train)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_missing_data_folder_is_one_line_and_writes_nothing(tmp_path):
    missing, run = tmp_path / "no-photos", tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "train.py"), "--data", str(missing), "--run", str(run)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "--data" in lines[0]
    assert not run.exists()
