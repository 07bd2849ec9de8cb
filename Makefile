# trackly-exec developer commands. `make test` works on a fresh clone: it builds .venv, installs
# everything (redis-server too, from Debian, when missing) and runs the whole default test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo run test test-slow test-all test-chaos test-chaos-short bench lint clean services

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP) services

# redis-server is what the tests (and a multi-VM deployment) rate-limit through; Chromium is the browser the
# dashboard test drives through Playwright (Debian's package: Playwright never downloads one). A failed Chromium
# install does not stop `make test`: that one test then skips, saying why.
services:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server (Debian package)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  echo "installing chromium (Debian package, for the dashboard browser test)"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; } || \
	  echo "chromium could not be installed: the dashboard browser test will be skipped"

demo: install
	$(BIN)/trackly demo

run: install
	$(BIN)/trackly run -c trackly.toml

test: install
	$(BIN)/python -m pytest -m "not slow and not chaos" $(PYTEST_ARGS)

# ruff (rules in pyproject.toml) on the package and the tests, ruff format on every Python file, mypy --strict
# on the package (trackly_exec, drivers; configured in pyproject.toml). .ci/run runs it after the tests.
lint: $(STAMP)
	$(BIN)/ruff check trackly_exec drivers tests
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-slow: install
	$(BIN)/python -m pytest -m "slow or chaos" --timeout=900 $(PYTEST_ARGS)

# The chaos campaign (tests/chaos): 20,000 messages, daemons/store/Redis killed, provider faults; prints the table.
# SEED=N reruns a campaign (default: random, printed). test-chaos-short is the CI version (fewer kills).
test-chaos: install
	$(BIN)/python -m tests.chaos $(CHAOS_ARGS)

test-chaos-short: install
	$(BIN)/python -m tests.chaos --short $(CHAOS_ARGS)

test-all: install
	$(BIN)/python -m pytest --timeout=900 $(PYTEST_ARGS)

# The peer sender of bench/peer.py runs on arq, which pins redis-py < 6: it gets a virtualenv of its own.
PEER := .venv-peer/.installed
$(PEER):
	test -x .venv-peer/bin/python || $(PYTHON) -m venv .venv-peer
	.venv-peer/bin/python -m pip install -q "arq==0.28.*" "pymongo>=4.10" "aiohttp>=3.9"
	touch $(PEER)

# Each bench appends its figures to $(BENCH_JSON); bench/report.py prints them as one table at the end.
BENCH_JSON := $(CURDIR)/.trackly/bench.jsonl
bench: install $(PEER)
	mkdir -p .trackly && rm -f $(BENCH_JSON)
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/executor.py --breakdown
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/storeops.py --repeat 2
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/scaleout.py --compare
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/peer.py
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/ratelimit.py
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/campaign.py
	TRACKLY_BENCH_JSON=$(BENCH_JSON) $(BIN)/python bench/tracking.py
	$(BIN)/python bench/report.py $(BENCH_JSON)

clean:
	rm -rf $(VENV) .venv-peer .pytest_cache .mypy_cache .ruff_cache .trackly *.egg-info
