# Shortcuts for people who have make; each target calls the same scripts the README names.
PYTHON := .venv/bin/python
STACK := $(PYTHON) deploy/stack.py

.PHONY: setup run start stop status reload test model

setup:            ## install what the stack needs (nginx, venv)
	scripts/setup.sh

run: setup        ## nginx + uWSGI in the foreground on $(HOST):$(PORT) (127.0.0.1:8080)
	$(STACK) run

start: setup      ## the same in the background
	$(STACK) start

stop:             ## stop the background stack
	$(STACK) stop

status:           ## is it up, and what are the workers doing
	$(STACK) status

reload:           ## zero-downtime rolling reload (new code, config or model version)
	$(STACK) reload

test:             ## install test dependencies and run the whole suite
	scripts/test.sh

model:            ## retrain the embedded digits model (reproducible)
	scripts/setup.sh --dev && $(PYTHON) scripts/train_digits.py

help:             ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'
