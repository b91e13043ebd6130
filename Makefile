# Two commands a newcomer needs:  `make demo`  and  `make test`.
# Each creates ./.venv on first use (torch 2.13.0 first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# optional integrations tested when installable; --no-deps, so that torch is never replaced
OPTIONAL := lightning==2.6.6 lightning-utilities torchmetrics fsspec pyyaml
# transformers depends on no torch: installed with its own dependencies
HUGGINGFACE := transformers==5.24.0

.PHONY: demo test lint test-all docs bench bench-wheels clean

$(BIN)/hessian-probe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(OPTIONAL) || echo "optional Lightning not installable: its test skips"
	$(BIN)/pip install --quiet $(HUGGINGFACE) || echo "optional transformers not installable: its tests skip"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

demo: $(BIN)/hessian-probe
	$(BIN)/hessian-probe demo

test: $(BIN)/hessian-probe lint
	$(BIN)/python -m pytest -q

lint: $(BIN)/hessian-probe
	$(BIN)/ruff check hessian_probe tests benchmarks examples docs

# the API reference from the docstrings (pdoc, a test extra): docs/api/index.html
docs: $(BIN)/hessian-probe
	$(BIN)/python docs/build_api.py docs/api

test-all: $(BIN)/hessian-probe
	$(BIN)/python -m pytest -q -m ''

PEERS := pyhessian==0.1 hessian-eigenthings==1.0.0a5 curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 \
	einconv==0.1.0 einops linear_operator opt-einsum

bench: $(BIN)/hessian-probe
	$(BIN)/pip install --quiet --no-deps $(PEERS)
	$(BIN)/python benchmarks/hvp_cost.py --workload digits-mlp
	$(BIN)/python benchmarks/compare.py --workload digits-mlp

# The peers, for the benchmarks only (never a dependency): wheels without their dependencies,
# installed by benchmarks/compare.py's callers with --no-deps (see benchmarks/run_gpu.sh).
bench-wheels:
	$(PYTHON) -m pip download --no-deps -d benchmarks/wheels $(PEERS)

clean:
	rm -rf $(VENV) build *.egg-info
