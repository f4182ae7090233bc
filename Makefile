# The README's commands. Everything runs from the repository root with the
# toolchain in .venv (made by `make setup`). `make help` lists the targets
# from their `##` comments.
#
# Own bed (several can coexist), e.g.:
#   PGLOG_BED=pglog-alice PGLOG_SUBNET=10.89.80 make bed-converge
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
PGLOG_BED ?= pglog-test
PGLOG_SUBNET ?= 10.89.71
HA_BED ?= pglog-ha
HA_SUBNET ?= 10.89.74
RESILIENCE_BED ?= pglog-res
RESILIENCE_SUBNET ?= 10.89.73
DEMO_BED ?= pglog-lab
DEMO_SUBNET ?= 10.89.70
DEMO_MODEL ?= stub-small

VENV := $(CURDIR)/.venv
VENV_DEV := $(CURDIR)/.venv-dev
VENV_AUDIT := $(CURDIR)/.venv-audit
export PATH := $(VENV)/bin:$(PATH)

# Environment of one bed: molecule 26 keeps its state under
# MOLECULE_EPHEMERAL_DIRECTORY (it ignores XDG_CACHE_HOME), so each bed gets
# its own; PGLOG_LAB_DIR holds the bed's generated secrets and CA. The image
# is found (or built) by the scenario itself.
bed_env = PGLOG_BED=$(1) PGLOG_SUBNET=$(2) PGLOG_LAB_DIR=$(CURDIR)/.lab/$(1) \
	MOLECULE_EPHEMERAL_DIRECTORY=$(CURDIR)/.lab/$(1)/molecule

# The test runs end, when they fail, with a recap of the failed tasks and tests:
# CI keeps only the tail of the output, which is otherwise molecule's destroy step.
RECAP := scripts/with-recap.sh

.PHONY: help setup venvs image lint unit molecule test test-beds test-ha test-resilience demo demo-down bed-login

help: ## this list
	@grep -hE '^[a-z][a-z%-]*:.*## ' $(MAKEFILE_LIST) \
	  | sed -E 's/^([^:]+):.*## (.*)$$/  \1\t\2/' | expand -t 24

setup: ## host packages, podman settings, venvs, test image (idempotent)
	scripts/setup-host.sh
	$(MAKE) --no-print-directory venvs image

venvs: ## .venv (toolchain), .venv-dev (logging package, editable), .venv-audit (checkov, schemathesis) from the hashed locks
	scripts/setup-venv.sh $(VENV) requirements/control.lock $(PYTHON)
	scripts/setup-venv.sh $(VENV_DEV) requirements/dev.lock $(PYTHON)
	scripts/setup-venv.sh $(VENV_AUDIT) requirements/audit.lock $(PYTHON)
	@if [[ "$$($(VENV_DEV)/bin/python -c 'import litellm_pglog, os; print(os.path.dirname(litellm_pglog.__file__))' 2>/dev/null)" \
	      != "$(CURDIR)/files/litellm_pglog/src/litellm_pglog" ]]; then \
	  $(VENV_DEV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
	    -e files/litellm_pglog; \
	  echo "[setup] litellm_pglog installed editable into $(VENV_DEV)"; fi

image: ## the test image (scripts/build-image.sh; built once per content hash)
	scripts/build-image.sh

lint: ## yamllint + ansible-lint (production profile) + checkov's Ansible checks + promtool check/test of the alert rules
	yamllint --strict .
	ansible-lint --profile production
	scripts/checkov.sh $(VENV_AUDIT)
	scripts/check-alert-rules.py

unit: ## host-side tests of the logging package and the validate scripts (tests/)
	$(VENV_DEV)/bin/pytest

molecule: ## full molecule test of the two-host bed (scenario default)
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) $(RECAP) molecule test -s default

test: lint unit test-beds ## everything CI runs

# The drills need a converged two-host bed, which is exactly what the default
# scenario leaves behind after its verify (its tests repair what they break):
# they run on that bed instead of converging a second one (~8 min saved).
test-beds: ## scenario default, then the resilience drills on the same bed, then destroy
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) $(RECAP) molecule test -s default --destroy never
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) $(RECAP) molecule verify -s resilience
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule destroy -s default

test-ha: ## the HA topology (Patroni + etcd, three containers): converge, idempotence, verify, destroy
	$(call bed_env,$(HA_BED),$(HA_SUBNET)) $(RECAP) molecule test -s ha

test-resilience: ## fault drills alone, on their own bed (scenario resilience)
	$(call bed_env,$(RESILIENCE_BED),$(RESILIENCE_SUBNET)) $(RECAP) molecule test -s resilience

bed-%: ## molecule create|prepare|syntax|converge|idempotence|verify|destroy|test of bed PGLOG_BED
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule $* -s default

bed-login: ## shell in a bed host (HOST=db|gateway)
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule login -s default --host $(PGLOG_BED)-$(or $(HOST),gateway)

demo: setup ## long-lived lab bed: converge + validate, prints how to call it
	$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) molecule converge -s default
	$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) ansible-playbook \
	  -i $(CURDIR)/.lab/$(DEMO_BED)/molecule/inventory validate.yml
	@echo
	@echo "Lab bed $(DEMO_BED): db $(DEMO_SUBNET).19, gateway $(DEMO_SUBNET).18"
	@echo "Evidence: $(CURDIR)/evidence/latest -> $$(readlink evidence/latest)"
	@echo "Call the gateway (HTTPS, verified against the lab's private CA; the key via a header file, not argv):"
	@echo "  curl -sS --cacert $(CURDIR)/.lab/$(DEMO_BED)/pki/ca.crt https://$(DEMO_SUBNET).18:4000/v1/chat/completions \\"
	@echo "    -H @<(echo \"Authorization: Bearer sk-\$$(cat $(CURDIR)/.lab/$(DEMO_BED)/secrets/litellm_master_key)\") \\"
	@echo "    -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"$(DEMO_MODEL)\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}'"
	@echo "Remove it: make demo-down"

demo-down: ## removes the lab bed
	-$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) molecule destroy -s default
	scripts/bed.sh clean $(DEMO_BED)
