# The two commands of README.md:
#   make lab    sets up this machine and brings up the lab appliance (the main job), Run:ai included
#               (from a synthetic tarball: the real one is proprietary)
#   make test   runs every test tier: lint, the collection's build and sanity, unit, lab, Molecule
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup lab test lint collection unit lab-test molecule bench lab-down

setup:
	scripts/setup-host.sh

lab: setup
	appliance lab bundle
	appliance lab up --runai-tarball "$$(appliance lab runai-tarball)"
	appliance bootstrap

lab-down: setup
	appliance lab down

test: setup lint collection unit lab-test molecule

lint:
	ruff check src tests benchmarks molecule plugins scripts roles/certs/files roles/backup/files
	ruff format --check src tests benchmarks molecule plugins scripts roles/certs/files roles/backup/files
	ansible-lint
	$(HOME)/.cache/appliance/bin/promtool check rules monitoring/prometheus/gpu-health-rules.yml
	cd monitoring/prometheus && $(HOME)/.cache/appliance/bin/promtool test rules gpu-health-rules.test.yml

# The Ansible collection appliance.runai (galaxy.yml): built with ansible-galaxy into build/, and
# `ansible-test sanity` on it (validate-modules included).
collection:
	scripts/collection-sanity.sh

unit:
	pytest -q tests/unit

lab-test:
	pytest -q --durations=30 tests/lab

# Every scenario under molecule/, on the lab's node image (built here when its recipe changed); the
# scenarios of roles that install from the offline bundle serve the lab's bundle to their instance.
molecule:
	appliance lab bundle
	@image=$$(appliance lab image) && for scenario in molecule/*/molecule.yml; do \
	  name=$$(basename $$(dirname $$scenario)); echo "== molecule test -s $$name ($$image)"; \
	  APPLIANCE_NODE_IMAGE=$$image molecule test -s $$name || exit 1; \
	done

bench: setup
	appliance lab bundle
	python benchmarks/lab.py
	python benchmarks/site.py
	python benchmarks/maintenance.py
