# Two commands for a fresh Linux machine with Python 3.10+:  make demo  |  make test
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench device-check clean

venv: $(STAMP)

# torch first, pinned, so the package's torch range is already met and pip pulls no other build.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[ros,test]"
	touch $(STAMP)

# The ROS 2 CLI, launch and colcon (../shared/ros2cli, built from their sources) for
# test/test_ros2_tools.py; installed once per venv (stamp), skipped where the folder is absent.
ROS2CLI ?= ../shared/ros2cli
ROS2CLI_STAMP := $(VENV)/.ros2cli-installed
ROS2CLI_DEP := $(if $(wildcard $(ROS2CLI)/install.sh),$(ROS2CLI_STAMP))

$(ROS2CLI_STAMP): $(STAMP) $(wildcard $(ROS2CLI)/install.sh)
	$(ROS2CLI)/install.sh $(VENV)
	touch $@

test: venv $(ROS2CLI_DEP)
	$(BIN)/python -m flake8 dovit_ros test launch scripts setup.py
	$(BIN)/python -m pytest -q test

lint: venv
	$(BIN)/python -m flake8 dovit_ros test launch scripts setup.py

bench: venv
	$(BIN)/dovit-bench --preset small --height 512 --width 1024 --keep 0.5,0.3,0.2 --json

# The GPU verification as one run (docs/benchmarks.md); CI runs it with --device cpu --quick.
device-check: venv
	$(BIN)/python scripts/device_check.py --out .device/out $(DEVICE_CHECK_ARGS)

# The shipped clip through segment_node over DDS; per-frame lines here, PNGs in out/demo/.
demo: venv
	$(BIN)/python -m dovit_ros.ros.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
