# The two quick-start commands: `make run` and `make test`. Both install what
# they need into .venv first (Python 3.11, the package and its test extras).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat setup.py | cksum | cut -d' ' -f1)

.PHONY: run test install clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(VENV)/bin/tallyflow demo

test: $(STAMP)
	$(VENV)/bin/tallyflow local install
	$(VENV)/bin/python -m pytest

clean:
	rm -rf out .tallyflow
