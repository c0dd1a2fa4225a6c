.PHONY: quickstart test test-fast setup

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/rl train configs/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not e2e"
