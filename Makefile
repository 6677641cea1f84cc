PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-pythons lint types pytest bench clean redis-server console-tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/contend demo

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server from Debian's packages"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# the console's browser tests (chromium + chromedriver) and the alert-rule checks (promtool);
# recommends skipped: prometheus would pull in the node exporter
console-tools:
	@missing=; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	[ -z "$$missing" ] || { \
	  echo "installing$$missing from Debian's packages"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends $$missing >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples ops noxfile.py
	$(BIN)/ruff format --check src tests benchmarks examples ops noxfile.py

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) redis-server console-tools
	$(BIN)/pytest

test: lint types pytest

# the suite again on every other CPython >= 3.11 on this machine (nox, in .nox/)
test-pythons: $(STAMP) redis-server console-tools
	$(BIN)/nox --sessions others

bench: $(STAMP)
	$(BIN)/contend bench

clean:
	rm -rf $(VENV) .nox build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
