# wxrelay — the front door.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: help venv test clean

.DEFAULT_GOAL := help

# Each part of the appliance brings its own targets.
include $(wildcard mk/*.mk)

help:
	@echo "make run      start the whole appliance locally (nginx, relays, workers, Redis)"
	@echo "make say      talk to it as WeChat would: make say TEXT=hello [ACCOUNT=name] [MODE=plain|compat|safe]"
	@echo "make status   the state of every process and of the chain"
	@echo "make doctor   every link checked, what is wrong said with its fix (INVENTORY=path: the deployed hosts)"
	@echo "make logs     follow the logs"
	@echo "make stop     stop everything make run started"
	@echo "make test     the test suite"
	@echo "make bench    the appliance under load beside the designs it replaces (QUICK=1: under 2 min)"
	@echo "make soak     300 msg/s for 10 minutes, Redis memory watched (RATE=, MINUTES=)"
	@echo "make chaos    rehearse the faults (workers, relays, Redis killed; Redis down, full) and print the table"
	@echo "make deploy   provision a VPS with Ansible: make deploy INVENTORY=path (README: Deploy to a VPS)"
	@echo "make rehearse the whole deploy against a fresh Debian 12 container, then the host restarted mid-traffic (root, systemd-nspawn)"
	@echo "make rehearse-fleet the multi-host deploy: relays, workers and broker containers on a private network, grown, hurt, upgraded"
	@echo "make box      the local Vagrant box wxrelay/debian12 (libvirt), built from Debian's packages (root)"
	@echo "make rehearse-vm vagrant up, checked end to end, provisioned again (changed=0), destroyed (root, libvirt)"
	@echo "make lint     yamllint, ansible-lint and a syntax check of the playbook"

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependencies into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	@rm -f $(VENV)/.installed-* && touch $@

test: venv
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
