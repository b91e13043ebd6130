# Two commands a newcomer needs:  `make demo`  and  `make test`.
# Each creates ./.venv on first use (torch 2.13.0 first, so pip never pulls a CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all bench clean

$(BIN)/hessian-probe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/hessian-probe
	$(BIN)/hessian-probe demo

test: $(BIN)/hessian-probe
	$(BIN)/python -m pytest -q

test-all: $(BIN)/hessian-probe
	$(BIN)/python -m pytest -q -m ''

bench: $(BIN)/hessian-probe
	$(BIN)/python benchmarks/hvp_cost.py --model mlp
	$(BIN)/python benchmarks/hvp_cost.py --model cnn

clean:
	rm -rf $(VENV) build *.egg-info
