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
# The bundle's copy of ../shared's photos: the detector is tested against facenet-pytorch's on them, on the GPU.
if [ -d .whl/shared ]; then export CROSSMATCH_SHARED="$PWD/.whl/shared"; fi
if ! "$PYTHON" -c 'import torch, sys; print("torch", torch.__version__); sys.exit(not torch.cuda.is_available())'; then
    case " $* " in
        *" --device cpu "*) echo "no GPU visible: running on the CPU, as asked" ;;
        *) echo "no GPU visible: refusing to spend the run on the CPU (pass --device cpu to mean it)" >&2; exit 3 ;;
    esac
fi
# -rs: a test skipped for want of a carried model says so.
timeout 150 "$PYTHON" -m pytest -m cuda tests/ops -q -rs -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/pytest.txt"
tests=${PIPESTATUS[0]}
timeout 270 "$PYTHON" benchmarks/device_check.py --models .whl/models --out "$OUT" "$@" 2>&1 | tee "$OUT/device_check.log"
check=${PIPESTATUS[0]}
echo "ops tests on the device: exit $tests; measurements: exit $check"
[ "$tests" = 0 ] && [ "$check" = 0 ]
