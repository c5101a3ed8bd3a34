# The local appliance: the whole stack on this machine under one supervisord,
# its files in the state folder (.state/, or WXRELAY_STATE_DIR).
#
# Each target runs the project's virtualenv, built on first use. VENV_READY=1
# uses $(VENV) as it is, installing nothing into it: the quickstart test runs
# a fresh clone on the test's own virtualenv that way.

.PHONY: run stop status logs say

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

logs: $(APPLIANCE_VENV)
	@$(PY) -m appliance logs

# make say TEXT=hello [MODE=plain|compat|safe] | make say EVENT=subscribe | make say EVENT=CLICK KEY=V1001
say: $(APPLIANCE_VENV)
	@$(PY) -m simulator \
		$(if $(TEXT),--text $(call shell_quote,$(value TEXT))) \
		$(if $(EVENT),--event $(call shell_quote,$(value EVENT))) \
		$(if $(KEY),--key $(call shell_quote,$(value KEY))) \
		$(if $(MODE),--mode $(call shell_quote,$(value MODE)))
