# The two entry points of the README, and the steps they are made of.
#   make run   set up everything and run the main job on local defaults
#   make test  set up everything and run the test suite against a real Kafka broker and Prism
#   make test-faults  the long fault tests on three-broker clusters of their own (tests marked `faults`)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-faults setup services unit bench clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "scanflow needs Python 3.11: set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "setup: installing Python packages (pinned by constraints.txt) ..."
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@

setup: $(STAMP)
	@bash infra/system-deps.sh nmap masscan openssh-server vsftpd tcpdump lighttpd chromium iptables
	@$(BIN)/scanflow infra fetch
	@$(BIN)/scanflow infra prism

services: setup
	@$(BIN)/scanflow infra up

run: setup
	@$(BIN)/scanflow run $(RUN_ARGS)

test: services
	@$(BIN)/python -m pytest -m "not faults" $(PYTEST_ARGS)

# Each test starts (and stops) a cluster of its own on free ports: the session broker is not needed.
test-faults: setup
	@$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

unit: $(STAMP)
	@$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

clean:
	-@$(BIN)/scanflow infra down
	rm -rf $(VENV) infra/.cache .scanflow
