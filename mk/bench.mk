# `make bench [QUICK=1]`: the whole appliance under load on this machine, side by
# side with the two designs it replaces (bench/baselines/), in one run.
# Results: bench/results/ (bench.json, table.txt, latency.png).
# QUICK=1 finishes in about 4 minutes; BENCH_FLAGS passes more options
# (python -m bench --help), e.g. BENCH_FLAGS="--out /tmp/bench --keep", or
# BENCH_FLAGS="--only slow-async" for one scenario.

.PHONY: bench bench-deps

BENCH_LOCK := bench/requirements.lock
BENCH_STAMP = $(VENV)/.bench-$(shell cksum < $(BENCH_LOCK) | cut -d' ' -f1)
BENCH_VENV := $(if $(VENV_READY),,venv)

bench: $(BENCH_VENV) bench-deps
	@sh deploy/local/install-packages.sh
	@command -v wrk >/dev/null 2>&1 || { echo "wxrelay: make bench needs wrk: apt-get install -y wrk" >&2; exit 1; }
	@$(PY) -m bench $(if $(filter-out 0,$(QUICK)),--quick) $(BENCH_FLAGS)

bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): $(BENCH_LOCK) | $(BENCH_VENV)
	@echo "installing the benchmark's dependencies into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -r $(BENCH_LOCK)
	@rm -f $(VENV)/.bench-* && touch $@

# `make soak [RATE=300] [MINUTES=10]`: a steady load through the whole local
# appliance with Redis memory watched, and the ledger checked for leftovers.
.PHONY: soak
RATE ?= 300
MINUTES ?= 10

soak: $(BENCH_VENV) bench-deps
	@sh deploy/local/install-packages.sh
	@command -v wrk >/dev/null 2>&1 || { echo "wxrelay: make soak needs wrk: apt-get install -y wrk" >&2; exit 1; }
	@$(PY) -m bench.soak --rate $(RATE) --minutes $(MINUTES)
