# The README's commands. Everything runs from the repository root with the
# toolchain in .venv (made by `make setup`).
#
#   make setup      host packages, podman settings, venvs, test image
#   make lint       yamllint + ansible-lint (production profile)
#   make unit       host-side pytest of the logging module (tests/, .venv-dev)
#   make molecule   full molecule test of the two-host test bed
#   make test-resilience  fault drills on an own bed (molecule/resilience), ~14 min
#   make test       lint + unit + molecule + test-resilience (~35 min here)
#   make demo       long-lived lab bed: converge + validate, prints how to call it
#   make demo-down  removes the lab bed
#
# Own bed (several can coexist), e.g.:
#   PGLOG_BED=pglog-alice PGLOG_SUBNET=10.89.80 make bed-converge
#   bed-{create,prepare,syntax,converge,idempotence,verify,destroy,test,login}
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
PGLOG_BED ?= pglog-test
PGLOG_SUBNET ?= 10.89.71
RESILIENCE_BED ?= pglog-res
RESILIENCE_SUBNET ?= 10.89.73
DEMO_BED ?= pglog-lab
DEMO_SUBNET ?= 10.89.70
DEMO_MODEL ?= stub-small

VENV := $(CURDIR)/.venv
VENV_DEV := $(CURDIR)/.venv-dev
export PATH := $(VENV)/bin:$(PATH)
PGLOG_IMAGE := $(shell scripts/build-image.sh --print-ref)

# Environment of one bed: molecule 26 keeps its state under
# MOLECULE_EPHEMERAL_DIRECTORY (it ignores XDG_CACHE_HOME), so each bed gets
# its own; PGLOG_LAB_DIR holds the bed's generated secrets and CA.
bed_env = PGLOG_BED=$(1) PGLOG_SUBNET=$(2) PGLOG_IMAGE=$(PGLOG_IMAGE) \
	PGLOG_LAB_DIR=$(CURDIR)/.lab/$(1) \
	MOLECULE_EPHEMERAL_DIRECTORY=$(CURDIR)/.lab/$(1)/molecule

.PHONY: help setup venvs image lint unit molecule test test-resilience demo demo-down \
	bed-create bed-prepare bed-syntax bed-converge bed-idempotence bed-verify bed-destroy bed-test bed-login

help:
	@sed -n '3,15p' Makefile | sed 's/^# \{0,1\}//'

setup:
	scripts/setup-host.sh
	$(MAKE) --no-print-directory venvs image

venvs:
	scripts/setup-venv.sh $(VENV) requirements/control.lock $(PYTHON)
	@if [[ -f requirements/dev.lock ]]; then \
	  scripts/setup-venv.sh $(VENV_DEV) requirements/dev.lock $(PYTHON); \
	else echo "[setup] requirements/dev.lock not present: .venv-dev skipped"; fi

image:
	scripts/build-image.sh

lint:
	yamllint --strict .
	ansible-lint --profile production

# Runs pytest on tests/ once it holds tests; until then says so.
unit:
	@if ! compgen -G 'tests/test_*.py' >/dev/null && ! compgen -G 'tests/**/test_*.py' >/dev/null; then \
	  echo "[unit] no tests in tests/ yet"; exit 0; fi; \
	if [[ ! -x $(VENV_DEV)/bin/pytest ]]; then \
	  echo "[unit] $(VENV_DEV) missing: run make setup (needs requirements/dev.lock)" >&2; exit 1; fi; \
	$(VENV_DEV)/bin/pytest tests/

molecule:
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule test -s default

test: lint unit molecule test-resilience

# Resilience drills (issue 7): own bed, the default scenario's definition as
# base config (molecule/resilience/molecule.yml holds only the differences).
# Durations: PGLOG_DRILL_DB_DOWN_S, PGLOG_DRILL_PARTITION_S, PGLOG_DRILL_RATE.
test-resilience:
	$(call bed_env,$(RESILIENCE_BED),$(RESILIENCE_SUBNET)) \
	  molecule -c molecule/default/molecule.yml test -s resilience

bed-create bed-prepare bed-syntax bed-converge bed-idempotence bed-verify bed-destroy bed-test:
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule $(@:bed-%=%) -s default

bed-login:
	$(call bed_env,$(PGLOG_BED),$(PGLOG_SUBNET)) molecule login -s default --host $(PGLOG_BED)-$(or $(HOST),gateway)

# Long-lived lab bed. Re-running converges the same bed (nothing duplicated).
demo: setup
	$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) molecule converge -s default
	$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) ansible-playbook \
	  -i $(CURDIR)/.lab/$(DEMO_BED)/molecule/inventory playbooks/validate.yml
	@echo
	@echo "Lab bed $(DEMO_BED): db $(DEMO_SUBNET).19, gateway $(DEMO_SUBNET).18"
	@echo "Evidence: $(CURDIR)/evidence/latest -> $$(readlink evidence/latest)"
	@echo "Call the gateway:"
	@echo "  curl -sS http://$(DEMO_SUBNET).18:4000/v1/chat/completions \\"
	@echo "    -H \"Authorization: Bearer sk-\$$(cat $(CURDIR)/.lab/$(DEMO_BED)/secrets/litellm_master_key)\" \\"
	@echo "    -H 'Content-Type: application/json' \\"
	@echo "    -d '{\"model\": \"$(DEMO_MODEL)\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}]}'"
	@echo "Remove it: make demo-down"

demo-down:
	-$(call bed_env,$(DEMO_BED),$(DEMO_SUBNET)) molecule destroy -s default
	scripts/bed.sh clean $(DEMO_BED)
