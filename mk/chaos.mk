# `make chaos [CHAOS_FLAGS=...]`: rehearse the faults on this machine — workers,
# relays and Redis killed, Redis stopped for a minute and filled up, nginx
# reloaded, every process killed at once and `make run` again — against a private appliance (its own state folder, free ports),
# and print the table: every message answered exactly once, or the exit says not.
# CHAOS_FLAGS passes more options (python -m chaos --help), e.g.
# CHAOS_FLAGS="--only redis-full --window 1.5 --keep".

.PHONY: chaos

CHAOS_FLAGS ?=
CHAOS_VENV := $(if $(VENV_READY),,venv)

chaos: $(CHAOS_VENV)
	@sh deploy/local/install-packages.sh
	@$(PY) -m chaos $(CHAOS_FLAGS)
