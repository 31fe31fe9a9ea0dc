# Two commands on a fresh machine: `make study` (the main job) and `make test` (the test suite).
# Each creates .venv and installs the pinned set by itself; nothing is downloaded at run time.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SCALE  ?= tiny
JOBS   ?= 2
# make study SEEDS=3 STEPS=100: seeds per cell (2: Table 1 and Figure 4 get paired intervals) and training
# steps per run (empty: the scale's)
SEEDS  ?= 2
STEPS  ?=
BENCH_FLAGS ?= --threads 1 --compile  # as reports/bench/README-tiny.md was made

.PHONY: install test study bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch is named in the same call as everything else: 2.13.0 takes the CPU wheel on disk
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0 -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

study: $(STAMP)
	$(VENV)/bin/hopelab study ablation --scale $(SCALE) --jobs $(JOBS) --seeds $(SEEDS) $(if $(STEPS),--steps $(STEPS))
	$(VENV)/bin/hopelab report runs/ablation --scale $(SCALE) --out reports/ablation-$(SCALE)

bench: $(STAMP)
	$(VENV)/bin/hopelab bench --scale $(SCALE) $(BENCH_FLAGS)

# on a GPU machine, with a Python whose torch sees the GPU (not the CPU venv above): about 8 minutes, writes
# reports/bench/gpu/ (scripts/gpu_check.sh says what it runs)
GPU_PY ?= python3
gpu-check:
	GPU_PY=$(GPU_PY) bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) .cache runs
