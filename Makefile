# `make run` sets everything up and trains the quickstart study; `make test` sets everything up
# and runs the tests. Both are idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get
# Debian packages: the real Fashion-MNIST images; tmux and PostgreSQL for the end-to-end tests.
DATA_PKGS := dataset-fashion-mnist
TEST_PKGS := tmux postgresql

.PHONY: setup run test test-quick bench bench-full data test-system clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

data:
	@test -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz || \
	  $(APT) install -y -qq $(DATA_PKGS) || \
	  ($(APT) update -qq && $(APT) install -y -qq $(DATA_PKGS))

test-system:
	@command -v tmux >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  $(APT) install -y -qq $(TEST_PKGS) || \
	  ($(APT) update -qq && $(APT) install -y -qq $(TEST_PKGS))

setup: $(STAMP) data

run: setup
	$(BIN)/lba run

test: setup test-system
	$(BIN)/python -m pytest -q -p no:cacheprovider

# `make bench`: every benchmark's quick version (a smoke run, minutes); `make bench-full`: the
# full sizes quoted in docs/performance.md (tens of minutes). bench/gpu.sh needs a GPU.
bench: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run_all.py

bench-full: setup
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/run_all.py --full

clean:
	rm -rf $(VENV) *.egg-info
