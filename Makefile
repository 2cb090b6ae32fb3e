# The few commands a newcomer needs. `make demo` and `make test` set up
# everything they need first (see scripts/bootstrap.sh).
VENV := .venv/bin

.PHONY: setup demo test lint fmt unit integration proto clean

setup:
	@scripts/bootstrap.sh

demo: setup
	$(VENV)/hermesx demo expense-voucher

lint: setup
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy hermesx storesite nameservice

test: lint
	$(VENV)/pytest -q tests

unit: setup
	$(VENV)/pytest -q tests/unit

integration: setup
	$(VENV)/pytest -q tests/integration

fmt:
	$(VENV)/ruff format .
	$(VENV)/ruff check --fix .

proto:
	$(VENV)/python protos/generate.py

clean:
	rm -rf .venv build *.egg-info atoms/build
