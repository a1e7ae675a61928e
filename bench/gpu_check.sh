#!/usr/bin/env bash
# GPU check of spice's CUDA selection path, on a machine with an NVIDIA GPU (about 6-8 minutes on
# an H200): installs what is missing, builds the CPU core, runs the GPU property tests against it,
# then times the two target configurations and writes bench/RESULTS_gpu.md.
#
#   bash bench/gpu_check.sh            # everything
#   QUICK=1 bash bench/gpu_check.sh    # small bench sizes (smoke test, ~2 minutes)
#
# CuPy: used if importable; else installed from wheels in .whl/ or wheels/ (offline machines),
# else from PyPI (cupy-cuda12x; set CUPY_PKG=cupy-cuda13x for CUDA 13 drivers).
# Caps (seconds) for the timed selections: CAP_NAIVE (75), CAP_LAZY (30).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
LOG=${OUT:-bench}/gpu_check.log
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

stamp "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true

stamp "CuPy"
if ! $PY -c "import cupy" 2>/dev/null; then
  WHEELS=""
  for d in .whl wheels; do
    if ls "$d"/*.whl >/dev/null 2>&1; then WHEELS=$d; fi
  done
  if [ -n "$WHEELS" ]; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/spice-site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/spice-site${PYTHONPATH:+:$PYTHONPATH}
  else
    $PY -m pip install -q "${CUPY_PKG:-cupy-cuda12x}"
  fi
fi
$PY -c "import cupy; print('cupy', cupy.__version__)"
for mod in pytest hypothesis pybind11; do
  $PY -c "import $mod" 2>/dev/null || $PY -m pip install -q "$mod"
done

stamp "build the CPU core (reference for the tests)"
./dev-build.sh
export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
$PY -c "import spice.gpu as g; print(g.available())"

stamp "GPU tests"
set +e
timeout 300 $PY -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider
TESTS=$?
set -e
stamp "GPU tests exit status: $TESTS"

stamp "timings"
BENCH_ARGS=()
if [ -n "${QUICK:-}" ]; then BENCH_ARGS+=(--quick); fi
set +e
timeout 420 $PY bench/gpu_bench.py --out bench/RESULTS_gpu.md ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
BENCH=$?
set -e
if [ -n "${OUT:-}" ] && [ -f bench/RESULTS_gpu.md ]; then cp bench/RESULTS_gpu.md "$OUT"/; fi
stamp "done: tests $TESTS, bench $BENCH"
exit $(( TESTS != 0 || BENCH != 0 ))
