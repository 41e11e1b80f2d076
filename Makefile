# Two commands on a fresh machine with Python 3.11: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs the project into it when missing or when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

CHROMIUM := /usr/bin/chromium

.PHONY: demo test bench lint clean device-bundle

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "crossmatch needs Python 3.11, got " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m jobs.sample $(OUT)/archive
	$(PY) -m jobs.pipeline $(OUT)/archive --label-pattern '*/{label}/*' --output $(OUT)/results --models $(OUT)/models
	$(PY) -m jobs.show $(OUT)/results

# The report's browser test drives the system Chromium (Debian's package, not a downloaded browser): installed
# once, as root or through sudo; where neither can, the test skips and says so. In CI (CI=true) a failed install
# fails `make test`: a browser test that skips there would prove nothing.
$(CHROMIUM):
	@fail() { echo "$$1"; case "$$CI" in true|1) echo "error: CI=true, where the browser test must run"; exit 1;; esac; }; \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
	  fail "warning: cannot install Chromium (not root, no sudo): the report's browser test will skip"; exit 0; fi; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null \
	  || fail "warning: apt-get could not install Chromium: the report's browser test will skip"

test: $(VENV)/.installed $(CHROMIUM)
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_manifest.py
	$(PY) benchmarks/bench_voices.py
	$(PY) benchmarks/bench_faces.py
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_style.py
	$(PY) benchmarks/bench_gatys.py
	$(PY) benchmarks/bench_soak.py

# The device check's luggage (benchmarks/device_check.sh): Python 3.12 wheels of what a bare CUDA machine lacks, the
# models it runs, pulled and verified here (that machine reaches no network), and a copy of ../shared's photos (when
# present) for the detector's test against facenet-pytorch's on the GPU. 52 MB; .whl/ is git-ignored.
DEVICE_WHEELS := av==18.1.0 fsspec==2026.9.0 threadpoolctl==3.8.0 webrtcvad-wheels==2.0.14.post1 facenet-pytorch==2.5.3
device-bundle: $(VENV)/.installed
	$(PY) -m pip download --quiet --only-binary=:all: --no-deps --implementation cp --python-version 3.12 \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --dest .whl $(DEVICE_WHEELS)
	for m in mtcnn ge2e-resemblyzer silero-vad; do $(PY) -m jobs.models pull $$m --models .whl/models || exit 1; done
	if [ -d ../shared/data/faces ]; then mkdir -p .whl/shared/data && cp -r ../shared/data/faces .whl/shared/data/; fi
	du -sh .whl

lint: $(VENV)/.installed
	$(PY) -m ruff check jobs ops cluster tests benchmarks

clean:
	rm -rf $(VENV) $(OUT)
