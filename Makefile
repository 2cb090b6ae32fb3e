# Shortcuts; ./dev holds the real commands (it sets everything up first).
.PHONY: setup demo test lint fmt unit integration proto clean

setup:
	@scripts/bootstrap.sh

demo:
	./dev demo

test:
	./dev test

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy hermesx storesite nameservice
	.venv/bin/lint-imports

unit: setup
	.venv/bin/pytest -q tests/unit

integration: setup
	.venv/bin/pytest -q tests/integration

fmt:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

proto:
	.venv/bin/python protos/generate.py

clean:
	rm -rf .venv build *.egg-info atoms/build
