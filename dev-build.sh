#!/usr/bin/env bash
# Developer build: compile spice._core in place (python/spice/_core*.so) for PYTHONPATH=python.
set -euo pipefail
cd "$(dirname "$0")"
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build build/dev
for f in build/dev/_core*.so; do cp "$f" "python/spice/.$(basename "$f").tmp" && mv -f "python/spice/.$(basename "$f").tmp" "python/spice/$(basename "$f")"; done
