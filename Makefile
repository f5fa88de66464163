# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need; nothing is set by hand.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Users with a GPU install their CUDA build of torch into .venv before `make`; we keep any torch already there.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# Jazzy's rclpy (a second generation of the API) for the node tests. Only the ROS wheels live there
# (~40 MB); torch, OpenCV & co. come from $(VENV) through a .pth that puts its site-packages after them.
JVENV  ?= .venv-jazzy
JPY    := $(JVENV)/bin/python
JSTAMP := $(JVENV)/.installed
NODE_TESTS := tests/test_ros_env.py tests/test_node.py tests/test_node_process.py tests/test_bag_play.py \
              tests/test_pairing.py tests/test_conversions.py tests/test_launch.py tests/test_package.py
# A clean environment for the other venv's interpreter: the ROS wheels' bootstrap re-executes Python
# with LD_LIBRARY_PATH pointing at its own venv, and would skip that if told it had already run.
CLEAN_ROS_ENV := env -u LD_LIBRARY_PATH -u _ROS_WHEELS_BOOTSTRAP_COMPLETE

.PHONY: venv venv-jazzy demo test test-kilted test-jazzy lint bench clean

$(STAMP): requirements/core.txt requirements/ros-wheels.txt requirements/dev.txt setup.py
	@echo ">> creating $(VENV) and installing torch, ROS 2 Kilted wheels and the project"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH)"
	$(PIP) install -r requirements/core.txt -r requirements/ros-wheels.txt -r requirements/dev.txt
	$(PIP) install --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(JSTAMP): requirements/ros-jazzy.txt $(STAMP)
	@echo ">> creating $(JVENV) with the ROS 2 Jazzy wheels (the rest from $(VENV))"
	test -x $(JPY) || $(PY) -m venv $(JVENV)   # $(PY)'s base interpreter: same Python as $(VENV)
	$(CLEAN_ROS_ENV) $(JPY) -m pip --disable-pip-version-check -q install -r requirements/ros-jazzy.txt
	$(CLEAN_ROS_ENV) $(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(CLEAN_ROS_ENV) $(JPY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz_mafs_main_venv.pth"
	touch $(JSTAMP)

venv-jazzy: $(JSTAMP)

demo: $(STAMP)
	$(VENV)/bin/mafs demo --out demo_out

test: test-kilted test-jazzy

test-kilted: $(STAMP)
	$(VENV)/bin/ruff check .
	MAFS_EXPECT_RCLPY=9. $(PY) -m pytest -n 2 --dist loadfile -q

test-jazzy: $(JSTAMP)
	@$(CLEAN_ROS_ENV) $(JPY) -c "import importlib.metadata as m, rclpy; print('>> node tests on rclpy', m.version('ros-rclpy'), 'from', rclpy.__file__)"
	$(CLEAN_ROS_ENV) MAFS_EXPECT_RCLPY=7. $(JPY) -m pytest -n 2 --dist loadfile -q $(NODE_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/model_stats.py
	$(PY) benchmarks/bench_engine.py --device cpu --variants mafs_t mafs_s
	$(PY) benchmarks/bench_node.py --checkpoint weights/mafs_t.safetensors
	$(PY) benchmarks/bench_bag_eval.py

clean:
	rm -rf $(VENV) $(JVENV) build demo_out runs .pytest_cache
