# The README's commands. Each target builds .venv on first use (and again when the
# dependency files change), installing the project with constraints.txt pins.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow demo bench lint typecheck clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,demo]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy src

test: lint typecheck
	$(BIN)/python -m pytest -q -m "not slow"

# The tests marked slow (real MiniLM weights, torchrun with two processes); CI runs them after
# `make test`. pytest's exit code 5 (nothing collected) is not a failure here.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow || test $$? -eq 5

demo: $(STAMP)
	$(BIN)/tdlens demo

bench: $(STAMP)
	$(BIN)/python benchmarks/ig_multitarget.py
	$(BIN)/python benchmarks/gradient_family.py
	$(BIN)/python benchmarks/perturbation.py
	$(BIN)/python benchmarks/metrics.py
	$(BIN)/python benchmarks/explorer.py
	$(BIN)/python benchmarks/text.py
	$(BIN)/python benchmarks/latent.py
	$(BIN)/python benchmarks/lrp.py
	$(BIN)/python benchmarks/dataset.py
	$(BIN)/python benchmarks/composed.py
	$(BIN)/python benchmarks/probing.py

clean:
	rm -rf $(VENV) build dist tdlens-demo
