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

.PHONY: bench
bench:            ## benchmark vs raw ONNX Runtime, uWSGI alone, gunicorn, uvicorn (~8 min; BENCH_ARGS=--quick: ~1 min)
	scripts/setup.sh --dev && $(PYTHON) -m bench $(BENCH_ARGS)

.PHONY: loadtest
loadtest:         ## Locust load test of HOST (a URL; default the local stack) with USERS for DURATION, report in reports/ (LOADTEST_ARGS="--step --slo-p95-ms 50")
	scripts/setup.sh --dev && $(PYTHON) -m loadtests.run $(if $(HOST),--host $(HOST)) $(if $(USERS),--users $(USERS)) $(if $(DURATION),--duration $(DURATION)) $(LOADTEST_ARGS)

# AWS (terraform/; README "On AWS"): needs AWS credentials and repo_url in terraform/terraform.tfvars.
TERRAFORM := terraform -chdir=terraform

.PHONY: deploy
deploy:           ## create or update the AWS deployment, print its url (settings: terraform/terraform.tfvars; TF_ARGS=-auto-approve)
	$(TERRAFORM) init -input=false
	$(TERRAFORM) apply $(TF_ARGS)
	@$(TERRAFORM) output

.PHONY: destroy
destroy:          ## delete everything `make deploy` created (TF_ARGS=-auto-approve)
	$(TERRAFORM) init -input=false
	$(TERRAFORM) destroy $(TF_ARGS)
