# notifyd: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN := .run
# `make demo` and `make test` each run their own private RabbitMQ node.
DEMO_NODE := NOTIFYD_DEV_DIR=$(CURDIR)/.rabbitmq/demo NOTIFYD_DEV_AMQP_PORT=26720 NOTIFYD_DEV_NODENAME=notifyd-demo
TEST_NODE := NOTIFYD_DEV_DIR=$(CURDIR)/.rabbitmq/test NOTIFYD_DEV_AMQP_PORT=26730 NOTIFYD_DEV_NODENAME=notifyd-test
AMQP_URL := amqp://guest:guest@127.0.0.1:26720/%2F
DEMO_PORT ?= 8080
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup venv npm rabbitmq-installed chromium haproxy ruby demo demo-kill demo-stop example example-stop test unit conformance fuzz soak bench bench-quick lint format clean

setup: venv npm rabbitmq-installed

venv: $(VENV)/.installed
$(VENV)/.installed: setup.py pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && \
	  $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

npm: node_modules/.installed
node_modules/.installed: package.json
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	npm install --no-audit --no-fund --loglevel=error
	mkdir -p web/vendor
	cp node_modules/autobahn-browser/autobahn.min.js web/vendor/autobahn.min.js
	touch $@

rabbitmq-installed:
	@test -x /usr/lib/rabbitmq/bin/rabbitmq-server || { \
	  echo "installing Debian's rabbitmq-server"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server; }

# Debian's Chromium for the browser tests (Playwright drives it; it never
# downloads a browser of its own)
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Debian's haproxy for the two-node load-balancer test
haproxy:
	@test -x /usr/sbin/haproxy || { \
	  echo "installing Debian's haproxy"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy; }

# Debian's Ruby with bunny and jwt for the Ruby backend example's test
ruby:
	@ruby -e 'require "bunny"; require "jwt"' 2>/dev/null || { \
	  echo "installing Debian's ruby, ruby-bunny and ruby-jwt"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ruby ruby-bunny ruby-jwt; }

lint: venv
	$(VENV)/bin/ruff check notifyd devtools tests twisted bench examples setup.py
	$(VENV)/bin/ruff format --check notifyd devtools tests twisted bench examples setup.py

format: venv
	$(VENV)/bin/ruff format notifyd devtools tests twisted bench examples setup.py
	$(VENV)/bin/ruff check --fix notifyd devtools tests twisted bench examples setup.py

test: setup chromium haproxy ruby lint
	$(TEST_NODE) $(PY) -m devtools.devbroker start
	@rc=0; $(TEST_NODE) $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	$(TEST_NODE) $(PY) -m devtools.devbroker stop; \
	exit $$rc

# The unit tier: no RabbitMQ, no Node, no browser (tests not marked e2e;
# tests/conftest.py marks them); under 30 s.  `make test` runs everything.
unit: venv
	$(PY) -m pytest -m "not e2e" -q $(PYTEST_ARGS)

# The WebSocket conformance suite with permessage-deflate on (the 12.x and
# 13.x cases too; slow). `make test` runs the core and 9.x cases.
conformance: setup
	$(TEST_NODE) $(PY) -m devtools.devbroker start
	@rc=0; NOTIFYD_CONFORMANCE_COMPRESSION=1 $(TEST_NODE) $(PY) -m pytest -s tests/test_conformance.py || rc=$$?; \
	$(TEST_NODE) $(PY) -m devtools.devbroker stop; \
	exit $$rc

# The long fuzz run (docs/security.md): 2,000 hypothesis examples of each
# kind (WAMP frames, AMQP messages), with and without the event log.
# `make test` runs a slice of 60.  NOTIFYD_FUZZ_SEED=… repeats a run.
fuzz: setup
	$(TEST_NODE) $(PY) -m devtools.devbroker start
	@rc=0; NOTIFYD_FUZZ_EXAMPLES=$${NOTIFYD_FUZZ_EXAMPLES:-2000} $(TEST_NODE) $(PY) -m pytest -s tests/test_fuzz.py || rc=$$?; \
	$(TEST_NODE) $(PY) -m devtools.devbroker stop; \
	exit $$rc

# The soak test (docs/operations.md): 30 minutes of mixed load on two nodes,
# a RabbitMQ restart or a notifyd SIGKILL every 150 s, clients resuming;
# counts lost, duplicated and reordered events per client.  SOAK_ARGS=...
# passes options (e.g. --minutes 5).
soak: setup
	$(PY) bench/soak.py $(SOAK_ARGS)

# Benchmarks (docs/performance.md): a private RabbitMQ node in .rabbitmq/bench,
# the server pinned to core 0, the load generator to core 1.
bench: setup
	$(PY) bench/run.py

bench-quick: setup
	$(PY) bench/run.py --quick

demo: setup demo-kill
	$(DEMO_NODE) $(PY) -m devtools.devbroker start
	@mkdir -p $(RUN)
	$(VENV)/bin/twistd --pidfile=$(RUN)/notifyd.pid --logfile=$(RUN)/notifyd.log notifyd \
	  --amqp-url '$(AMQP_URL)' --listen tcp:$(DEMO_PORT):interface=127.0.0.1 \
	  --allow-anonymous --allow-publish demo. --history '#'
	@$(PY) -m devtools.devbroker wait-http http://127.0.0.1:$(DEMO_PORT)/readyz || \
	  { echo "notifyd did not become ready; see $(RUN)/notifyd.log"; exit 1; }
	@nohup $(VENV)/bin/notifyd-publish --amqp-url '$(AMQP_URL)' --logged '#' --demo --rate 0.5 \
	  > $(RUN)/publisher.log 2>&1 & echo $$! > $(RUN)/publisher.pid
	@echo
	@echo "  notifyd is running and sample invoice events are being published."
	@echo "  Open  http://127.0.0.1:$(DEMO_PORT)/  in your browser."
	@echo
	@echo "  WebSocket (WAMP v2): ws://127.0.0.1:$(DEMO_PORT)/ws   realm: realm1"
	@echo "  Publish your own:    $(VENV)/bin/notifyd-publish --amqp-url '$(AMQP_URL)' invoice.sent '{\"invoice\": \"INV-1\"}'"
	@echo "  Logs: $(RUN)/notifyd.log, $(RUN)/publisher.log    Stop everything: make demo-stop"

# The Python backend example of docs/integration.md: the demo's RabbitMQ,
# notifyd with JWT tickets and the example authz file, and the example app.
EXAMPLE_APP ?= 8000
example: setup demo-kill example-stop
	$(DEMO_NODE) $(PY) -m devtools.devbroker start
	@mkdir -p $(RUN)
	@[ -s notifyd-jwt.secret ] || { umask 077; $(PY) -c "import secrets; print(secrets.token_urlsafe(48))" > notifyd-jwt.secret; }
	$(VENV)/bin/twistd --pidfile=$(RUN)/example-notifyd.pid --logfile=$(RUN)/example-notifyd.log notifyd \
	  --amqp-url '$(AMQP_URL)' --listen tcp:$(DEMO_PORT):interface=127.0.0.1 \
	  --authz-file docs/examples/authz.toml --jwt-secret-file notifyd-jwt.secret \
	  --jwt-algorithm HS256 --jwt-audience notifyd --jwt-issuer http://127.0.0.1:$(EXAMPLE_APP) \
	  --allowed-origins http://127.0.0.1:$(EXAMPLE_APP) --history 'acct.#'
	@$(PY) -m devtools.devbroker wait-http http://127.0.0.1:$(DEMO_PORT)/readyz || \
	  { echo "notifyd did not become ready; see $(RUN)/example-notifyd.log"; exit 1; }
	@nohup $(PY) examples/python/app.py --amqp-url '$(AMQP_URL)' --port $(EXAMPLE_APP) \
	  --notifyd http://127.0.0.1:$(DEMO_PORT) --notifyd-admin http://127.0.0.1:$(DEMO_PORT) \
	  --jwt-secret-file notifyd-jwt.secret --issuer http://127.0.0.1:$(EXAMPLE_APP) --logged 'acct.#' \
	  > $(RUN)/example-app.log 2>&1 & echo $$! > $(RUN)/example-app.pid
	@$(PY) -m devtools.devbroker wait-http http://127.0.0.1:$(EXAMPLE_APP)/ || \
	  { echo "the example app did not start; see $(RUN)/example-app.log"; exit 1; }
	@echo
	@echo "  The example backend runs at  http://127.0.0.1:$(EXAMPLE_APP)/  (notifyd at :$(DEMO_PORT))."
	@echo "  Log in as alice, bob or carol and press the buttons; see docs/integration.md."
	@echo "  Logs: $(RUN)/example-app.log, $(RUN)/example-notifyd.log    Stop: make example-stop"

example-stop:
	-@[ -f $(RUN)/example-app.pid ] && kill $$(cat $(RUN)/example-app.pid) 2>/dev/null; rm -f $(RUN)/example-app.pid
	-@[ -f $(RUN)/example-notifyd.pid ] && kill $$(cat $(RUN)/example-notifyd.pid) 2>/dev/null; rm -f $(RUN)/example-notifyd.pid

demo-stop: demo-kill example-stop
	-@[ -x $(PY) ] && $(DEMO_NODE) $(PY) -m devtools.devbroker stop

demo-kill:
	-@[ -f $(RUN)/publisher.pid ] && kill $$(cat $(RUN)/publisher.pid) 2>/dev/null; rm -f $(RUN)/publisher.pid
	-@[ -f $(RUN)/notifyd.pid ] && kill $$(cat $(RUN)/notifyd.pid) 2>/dev/null; \
	  for i in $$(seq 1 50); do [ -f $(RUN)/notifyd.pid ] || break; sleep 0.1; done; true

clean: demo-stop
	rm -rf $(VENV) node_modules .rabbitmq $(RUN) *.egg-info
