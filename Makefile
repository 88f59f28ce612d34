# The two commands of the quick start: `make run` and `make test`.
# Everything lands in .venv (created if missing); nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test
RUNSTAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench fuzz fuzz-money clean plugin-cache

$(RUNSTAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . --config-settings editable_mode=compat
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	touch $@

$(STAMP): $(RUNSTAMP) setup.cfg pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

## run the daemon on its embedded default (./lnt-data, ports 9000 and 8080 on 127.0.0.1; the
## demo merchant may be notified on loopback)
run: $(RUNSTAMP)
	$(BIN)/twistd -n lnt-recharge --notify-allow 127.0.0.0/8

BROWSER := $(VENV)/.browser

## the console's browser test drives Debian's chromium; installed here when root may
$(BROWSER):
	@if command -v chromium >/dev/null 2>&1; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) \
		&& touch $@; \
	else echo "make: no chromium, and no root to install it: the browser test is skipped"; fi

## lint, type-check and run the whole test suite
test: $(STAMP) $(BROWSER) lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check lnt tests twisted bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

BENCHSTAMP := $(VENV)/.installed-bench

$(BENCHSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]' --config-settings editable_mode=compat
	touch $@

## sign-ins, recharges, HTTP calls, 10,000 idle connections, PostgreSQL, against the ceiling
## (about 4 minutes); the plot lands in bench-throughput.png
bench: $(BENCHSTAMP)
	$(BIN)/python -m bench.run

FUZZSTAMP := $(VENV)/.installed-fuzz

$(FUZZSTAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,fuzz]' --config-settings editable_mode=compat
	touch $@

## coverage-guided fuzzing (atheris) of the DD decoder, the order API envelope and the
## consignment form parser, a million inputs each (RUNS=N for another count); findings land in
## .fuzz/ and fail the target
fuzz: $(FUZZSTAMP)
	$(BIN)/python -m tests.fuzz_targets --runs $${RUNS:-1000000}

## the card-against-the-books model test with 2000 random fault sequences (about 8 minutes);
## LNT_MONEY_SEED=N picks another seed
fuzz-money: $(STAMP)
	LNT_MONEY_SEQUENCES=$${LNT_MONEY_SEQUENCES:-2000} $(BIN)/pytest -p no:cacheprovider -s \
		tests/test_money_model.py

## regenerate Twisted's plugin cache (dropin.cache) after installing or upgrading
plugin-cache: $(RUNSTAMP)
	$(BIN)/lnt-admin plugin-cache

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache .fuzz
