.PHONY: quickstart test test-fast setup constraints constraints-upgrade

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/rl train configs/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not e2e"

# constraints/cpu.txt := the exact versions in .venv (CPU), for scripts/setup.sh to install
constraints:
	bash scripts/freeze_constraints.sh

# on purpose: a fresh .venv at the newest versions pyproject.toml allows, the whole test suite, then freeze them
constraints-upgrade:
	rm -rf .venv
	RL_NO_CONSTRAINTS=1 bash scripts/setup.sh
	.venv/bin/python -m pytest -q
	bash scripts/freeze_constraints.sh
