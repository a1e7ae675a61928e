"""The C++ unit tests (csrc/tests/unit_tests.cpp: the lazy queue's order with its hot list,
sort_by_step, take_products, the tile planner against brute force), compiled and run here so
that the suite covers them without a CMake build. Skipped where there is no C++ compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _compiler() -> str | None:
    for cxx in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cxx and shutil.which(cxx):
            return cxx
    return None


@pytest.mark.skipif(not (CSRC / "tests" / "unit_tests.cpp").exists(), reason="no csrc/ checkout")
def test_cpp_unit_tests(tmp_path):
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / "unit_tests"
    build = subprocess.run(
        [
            cxx,
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Werror",
            f"-I{CSRC}",
            str(CSRC / "tests" / "unit_tests.cpp"),
            str(CSRC / "tile_plan.cpp"),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "all checks passed" in run.stdout
