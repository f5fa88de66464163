# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; nothing is set by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Users with a GPU install their CUDA build of torch into .venv before `make`; we keep any torch already there.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): requirements/core.txt requirements/ros-wheels.txt requirements/dev.txt setup.py
	@echo ">> creating $(VENV) and installing torch, ROS 2 Kilted wheels and the project"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -r requirements/core.txt -r requirements/ros-wheels.txt -r requirements/dev.txt
	$(PIP) install --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mafs demo --out demo_out

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadfile -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/model_stats.py
	$(PY) benchmarks/bench_engine.py --device cpu --variants mafs_t mafs_s
	$(PY) benchmarks/bench_node.py --checkpoint weights/mafs_t.safetensors
	$(PY) benchmarks/bench_bag_eval.py

clean:
	rm -rf $(VENV) build demo_out runs .pytest_cache
