# The local appliance: the whole stack on this machine under one supervisord,
# its files in the state folder (.state/, or WXRELAY_STATE_DIR).
#
# Each target runs the project's virtualenv, built on first use. VENV_READY=1
# uses $(VENV) as it is, installing nothing into it: the quickstart test runs
# a fresh clone on the test's own virtualenv that way.

.PHONY: run stop status logs say reload doctor

APPLIANCE_VENV := $(if $(VENV_READY),,venv)
# One argument for the shell, whatever quotes TEXT holds.
shell_quote = '$(subst ','\'',$(1))'

run: $(APPLIANCE_VENV)
	@sh deploy/local/install-packages.sh
	@$(PY) -m appliance run

stop: $(APPLIANCE_VENV)
	@$(PY) -m appliance stop

status: $(APPLIANCE_VENV)
	@$(PY) -m appliance status

# After editing the accounts file: relays take it without dropping a delivery, workers restart one by one.
reload: $(APPLIANCE_VENV)
	@$(PY) -m appliance reload

logs: $(APPLIANCE_VENV)
	@$(PY) -m appliance logs

# make say TEXT=hello [ACCOUNT=name] [MODE=plain|compat|safe|wecom] | make say EVENT=subscribe | make say EVENT=CLICK KEY=V1001
say: $(APPLIANCE_VENV)
	@$(PY) -m simulator \
		$(if $(ACCOUNT),--account $(call shell_quote,$(value ACCOUNT))) \
		$(if $(TEXT),--text $(call shell_quote,$(value TEXT))) \
		$(if $(EVENT),--event $(call shell_quote,$(value EVENT))) \
		$(if $(KEY),--key $(call shell_quote,$(value KEY))) \
		$(if $(MODE),--mode $(call shell_quote,$(value MODE)))

# Every link a message travels, checked; what is wrong said in one line with its fix. Exit 0: all good.
# make doctor INVENTORY=path asks the deployed hosts instead (deploy/ansible/doctor.yml).
doctor: $(if $(INVENTORY),deploy-tools,$(APPLIANCE_VENV))
ifeq ($(INVENTORY),)
	@$(PY) -m appliance doctor
else
	cd $(ANSIBLE_DIR) && $(ANSIBLE_ENV) $(ANSIBLE_BIN)/ansible-playbook -i $(abspath $(INVENTORY)) doctor.yml $(VAULT_ARGS) $(ANSIBLE_ARGS)
endif
