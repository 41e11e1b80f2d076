# Two commands on a fresh machine with Python 3.11: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv and installs the project into it when missing or when pyproject.toml changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "crossmatch needs Python 3.11, got " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m jobs.sample $(OUT)/archive
	$(PY) -m jobs.manifest $(OUT)/archive --label-pattern '*/{label}/*' --output $(OUT)/results
	$(PY) -m jobs.models pull ge2e-resemblyzer --models $(OUT)/models
	$(PY) -m jobs.models pull silero-vad --models $(OUT)/models
	$(PY) -m jobs.embed_voices $(OUT)/results --models $(OUT)/models --output $(OUT)/results
	$(PY) -m jobs.models pull mtcnn --models $(OUT)/models
	$(PY) -m jobs.models pull dlib-resnet-v1 --models $(OUT)/models
	$(PY) -m jobs.embed_faces $(OUT)/results --models $(OUT)/models --output $(OUT)/results
	$(PY) -m jobs.match search --queries $(OUT)/results --per-source --k 3 --output $(OUT)/results
	$(PY) -m jobs.calibrate $(OUT)/results --output $(OUT)/results
	$(PY) -m jobs.match identify --queries $(OUT)/results --calibration $(OUT)/results --k 2 --output $(OUT)/results
	$(PY) -m jobs.show $(OUT)/results

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_manifest.py
	$(PY) benchmarks/bench_voices.py
	$(PY) benchmarks/bench_faces.py
	$(PY) benchmarks/bench_search.py

lint: $(VENV)/.installed
	$(PY) -m ruff check jobs ops cluster tests benchmarks

clean:
	rm -rf $(VENV) $(OUT)
