#!/usr/bin/env bash
# The device check, as one command on a bare CUDA machine: Python 3.12 with torch, torchvision, torchaudio, numpy,
# pyarrow, Pillow, scipy and pytest; no Ray, no network. What else crossmatch's ops need (PyAV, fsspec,
# threadpoolctl, webrtcvad) and the models it runs travel in .whl/ (made here by `make device-bundle`).
#
#   bash benchmarks/device_check.sh [device_check.py options, e.g. --quick --device cpu]
#
# Installs the wheels into a private folder, runs the ops tests marked cuda on the GPU, then the measurements.
# Everything it prints also goes under $OUT (default out/device): pytest.txt, device_check.json and .txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUT"
if [ ! -d .whl/models ]; then
    echo "no .whl/ here: run \`make device-bundle\` on a machine with the project installed, and bring .whl/ along" >&2
    exit 2
fi
site=$(mktemp -d /tmp/crossmatch-site-XXXX)
if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$site" .whl/*.whl; then
    # No pip there: a wheel is a zip laid out for site-packages, and these need no install scripts.
    for wheel in .whl/*.whl; do "$PYTHON" -m zipfile -e "$wheel" "$site" || exit 2; done
fi
export PYTHONPATH="$site:$PWD" CROSSMATCH_TEST_MODELS="$PWD/.whl/models" PYTHONUNBUFFERED=1
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no GPU visible")'
timeout 240 "$PYTHON" -m pytest -m cuda tests/ops -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/pytest.txt"
tests=${PIPESTATUS[0]}
timeout 330 "$PYTHON" benchmarks/device_check.py --models .whl/models --out "$OUT" "$@"
check=$?
echo "ops tests on the device: exit $tests; measurements: exit $check"
[ "$tests" = 0 ] && [ "$check" = 0 ]
