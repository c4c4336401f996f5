# The two commands of the README: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR := .run
RUN_CONFIG ?= deploy/sendwarden.dev.toml
REDIS_PORT ?= 6379

.PHONY: run stop test lint bench system-deps venv clean

system-deps:
	./scripts/install-system-deps.sh
	./scripts/fetch-private-mtas.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: system-deps $(VENV)/.installed

# Runs the milter in the foreground on the development config: a private Redis on
# 127.0.0.1:$(REDIS_PORT) (started here unless one answers already), SQLite under .run/.
run: venv
	mkdir -p $(RUN_DIR)
	@if ! redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
		echo "starting redis-server on 127.0.0.1:$(REDIS_PORT)"; \
		redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes \
			--dir $(CURDIR)/$(RUN_DIR) --pidfile $(CURDIR)/$(RUN_DIR)/redis.pid \
			--logfile $(CURDIR)/$(RUN_DIR)/redis.log --save ""; \
	fi
	$(VENV)/bin/sendwarden check-config -c $(RUN_CONFIG)
	exec $(VENV)/bin/sendwarden milter -c $(RUN_CONFIG)

# Stops the private Redis that `make run` started (the milter stops with Ctrl-C).
stop:
	@if [ -f $(RUN_DIR)/redis.pid ]; then redis-cli -p $(REDIS_PORT) shutdown nosave || true; fi

test: venv
	$(VENV)/bin/ruff check sendwarden tests loadtest
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra

lint: venv
	$(VENV)/bin/ruff check sendwarden tests loadtest
	$(VENV)/bin/ruff format --check sendwarden tests loadtest
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m loadtest

clean:
	rm -rf $(VENV) $(RUN_DIR) build *.egg-info
