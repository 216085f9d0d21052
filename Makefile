# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast bench clean

$(BIN)/tunix-rt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,tunix]'
	# An editable install leaves the project uncompiled; with PYTHONDONTWRITEBYTECODE set
	# (as on these machines) every command would compile it again at each start.
	$(BIN)/python -m compileall -q tunix_rt flows tasks judges migrations >/dev/null
	touch $@

install: $(BIN)/tunix-rt

demo: install
	$(BIN)/tunix-rt demo

# The whole suite: unit, db (SQLite and a PostgreSQL the session starts), flows, cli.
# --durations names the slowest tests in every run, so CI time is watched where it is spent.
test: install
	$(BIN)/pytest -q --durations=40

# Pure tests only: no database server, no Prefect.
test-fast: install
	$(BIN)/pytest -q tests/unit

bench: install
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) tunix_rt.db tunix_rt.db-* tunix_rt_demo .pytest_cache
