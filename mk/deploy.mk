# Deploy to VPSes with Ansible (deploy/ansible), rehearsed in a container
# (deploy/rehearse). See README.md, "Deploy to a VPS".
ANSIBLE_DIR := deploy/ansible
DEPLOY_STAMP := $(VENV)/.deploy-installed-$(shell cat requirements.lock deploy/requirements.lock | cksum | cut -d' ' -f1)
# make deploy INVENTORY=path/to/inventory [VAULT_PASSWORD_FILE=file] [ANSIBLE_ARGS="--limit host --check"]
INVENTORY ?=
VAULT_PASSWORD_FILE ?=
ANSIBLE_ARGS ?=

ifneq ($(VAULT_PASSWORD_FILE),)
VAULT_ARGS := --vault-password-file $(abspath $(VAULT_PASSWORD_FILE))
else ifeq ($(ANSIBLE_VAULT_PASSWORD_FILE),)
VAULT_ARGS := --ask-vault-pass
endif

ANSIBLE_BIN := $(abspath $(VENV))/bin
ANSIBLE_ENV := ANSIBLE_CONFIG=$(CURDIR)/$(ANSIBLE_DIR)/ansible.cfg PATH=$(ANSIBLE_BIN):$$PATH

.PHONY: deploy rehearse rehearse-fleet lint deploy-tools

# Ansible and its linters, pinned, in the same virtualenv (the project's lock
# as constraints: one consistent set).
deploy-tools: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): requirements.lock deploy/requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned deploy tools (Ansible) into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -r deploy/requirements.lock
	@rm -f $(VENV)/.deploy-installed-* && touch $@

# The tests lint the playbook too.
test: deploy-tools

deploy: deploy-tools
	@test -n "$(INVENTORY)" || { echo "usage: make deploy INVENTORY=path/to/inventory [VAULT_PASSWORD_FILE=file] (README: Deploy to a VPS)" >&2; exit 2; }
	cd $(ANSIBLE_DIR) && $(ANSIBLE_ENV) $(ANSIBLE_BIN)/ansible-playbook -i $(abspath $(INVENTORY)) site.yml $(VAULT_ARGS) $(ANSIBLE_ARGS)

rehearse: venv deploy-tools
	$(PY) deploy/rehearse/rehearse.py

lint: deploy-tools
	$(ANSIBLE_BIN)/yamllint --strict deploy/ansible deploy/monitoring tests/deploy .yamllint .ansible-lint
	cd $(ANSIBLE_DIR) && $(ANSIBLE_ENV) $(ANSIBLE_BIN)/ansible-lint --profile production
	cd $(ANSIBLE_DIR) && $(ANSIBLE_ENV) $(ANSIBLE_BIN)/ansible-playbook --syntax-check -i inventory/example site.yml

# The multi-host layout (tests/deploy/fleet): relays, workers and broker
# containers on a private network, grown, hurt and upgraded (deploy/rehearse/fleet.py).
rehearse-fleet: venv deploy-tools
	$(PY) deploy/rehearse/fleet.py
