# make test: create .venv if missing, install the project and its pinned tools, run pytest.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: test lint install clean

$(PY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"' \
	  || { echo "make: need Python 3.10+ as $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV) || { echo "make: venv failed; on Debian/Ubuntu: apt-get install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.py requirements.txt requirements-dev.txt constraints.txt
	$(PY) -m pip install --quiet -c constraints.txt $(TORCH)
	$(PY) -m pip install --quiet -c constraints.txt -r requirements-dev.txt -e .
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
