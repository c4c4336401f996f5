# The two commands of the README: `make run` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_DIR ?= .run
RUN_CONFIG ?= deploy/sendwarden.dev.toml
REDIS_PORT ?= 6379
# make install (production: runtime dependencies only; see scripts/install.sh)
PREFIX ?= /opt/sendwarden
SYSCONFDIR ?= /etc/sendwarden
UNITDIR ?= /etc/systemd/system
PYTHON3 ?= /usr/bin/python3
SERVICE_GROUP ?= sendwarden
MILTER_PORT ?= 8891
RUN_DIR_ABS = $(abspath $(RUN_DIR))

.PHONY: run run-config stop test install wheel lint bench system-deps venv clean

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
# 127.0.0.1:$(REDIS_PORT) (started here unless one answers already), SQLite under .run/,
# the milter on inet:127.0.0.1:$(MILTER_PORT), which any local Postfix may use (chrooted
# or not, whatever its user): smtpd_milters = inet:127.0.0.1:$(MILTER_PORT).
run: venv run-config
	@if ! redis-cli -p $(REDIS_PORT) ping >/dev/null 2>&1; then \
		echo "starting redis-server on 127.0.0.1:$(REDIS_PORT)"; \
		redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --daemonize yes \
			--dir $(RUN_DIR_ABS) --pidfile $(RUN_DIR_ABS)/redis.pid \
			--logfile $(RUN_DIR_ABS)/redis.log --save ""; \
	fi
	$(VENV)/bin/sendwarden check-config -c $(RUN_DIR)/sendwarden.toml
	@echo "Postfix: smtpd_milters = inet:127.0.0.1:$(MILTER_PORT)" \
		"and non_smtpd_milters = inet:127.0.0.1:$(MILTER_PORT) (docs/operations.md)"
	exec $(VENV)/bin/sendwarden milter -c $(RUN_DIR)/sendwarden.toml

# The config `make run` uses: $(RUN_CONFIG) with the absolute run directory and ports.
run-config:
	mkdir -p $(RUN_DIR)
	sed -e 's|@RUN_DIR@|$(RUN_DIR_ABS)|g' -e 's|@REDIS_PORT@|$(REDIS_PORT)|g' \
		-e 's|@MILTER_PORT@|$(MILTER_PORT)|g' $(RUN_CONFIG) > $(RUN_DIR)/sendwarden.toml

# Stops the private Redis that `make run` started (the milter stops with Ctrl-C).
stop:
	@if [ -f $(RUN_DIR)/redis.pid ]; then redis-cli -p $(REDIS_PORT) shutdown nosave || true; fi

test: venv wheel
	$(VENV)/bin/ruff check sendwarden tests loadtest
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -ra

# The wheel `make install` installs, built in CI so packaging breaks loudly (dist/).
wheel: venv
	rm -rf dist
	$(PY) -m pip wheel -q --no-deps -w dist .

# Production install into $(PREFIX) (a virtualenv with the runtime dependencies only),
# the config skeleton in $(SYSCONFDIR), systemd units in $(UNITDIR). Idempotent.
install:
	PREFIX=$(PREFIX) SYSCONFDIR=$(SYSCONFDIR) UNITDIR=$(UNITDIR) PYTHON3=$(PYTHON3) \
		SERVICE_GROUP=$(SERVICE_GROUP) ./scripts/install.sh

lint: venv
	$(VENV)/bin/ruff check sendwarden tests loadtest
	$(VENV)/bin/ruff format --check sendwarden tests loadtest
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m loadtest

clean:
	rm -rf $(VENV) $(RUN_DIR) build *.egg-info
