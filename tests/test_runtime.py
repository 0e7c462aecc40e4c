"""Process tuning applied at import: glibc malloc keeps freed memory, OpenMP threads sleep."""

from __future__ import annotations

import os
import sys

import pytest

from vidcolor import runtime


def test_tuning_is_applied_at_import():
    assert runtime.PROCESS_TUNING["omp_passive"] == (
        os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE")
    assert runtime.tune_process() == runtime.PROCESS_TUNING  # idempotent


@pytest.mark.skipif(not sys.platform.startswith("linux") or not runtime._is_glibc(),
                    reason="mallopt is glibc's")
def test_malloc_is_tuned_on_glibc_unless_the_user_tuned_it(monkeypatch):
    assert runtime._keep_freed_memory()
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not runtime._keep_freed_memory()


def test_user_omp_policy_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not runtime._passive_omp_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
