# The two commands a newcomer needs: `make run` and `make test`. Everything else is set up from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

PREFIX ?= /opt/pyoomd
UNITDIR ?= /etc/systemd/system
DBUSDIR ?= /usr/share/dbus-1/system.d
CONFDIR ?= /etc/pyoomd
# The notify-reload drop-in needs systemd >= 253; the version of the systemd that will run the unit decides.
SYSTEMD_VERSION ?= $(shell systemctl --version 2>/dev/null | awk 'NR == 1 { print $$2 + 0 }')

.PHONY: run test test-deps test-tools lint unit real clean install install-units user demo

$(STAMP): pyproject.toml examples/plugins/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# The example third-party plugin package: its end-to-end test needs it installed beside pyoomd.
	$(BIN)/pip install --quiet -e examples/plugins
	touch $(STAMP)

## The unprivileged user the collector and detector run as (pyoomd run --user); only root can add it.
user:
	@if [ "$$(id -u)" = 0 ] && ! id -u pyoomd >/dev/null 2>&1; then \
		useradd --system --user-group --no-create-home --home-dir / --shell /usr/sbin/nologin \
			--comment "pyoomd workers" pyoomd && echo "added system user pyoomd"; fi

## Start the daemon in the foreground with the shipped policy (root: it reads and kills in real cgroups).
run: $(STAMP) user
	$(BIN)/pyoomd run --config config.yaml

## A guided demo: a page-cache thrasher in a cgroup of its own, pyoomd killing it, everything removed after.
demo: $(STAMP) user
	$(BIN)/python examples/demo.py

## Debian's packages the tests run for real: a notification server (dunst) on a virtual screen (xvfb), for the
## desktop notifications. Installed only when missing, and only as root (as CI runs).
TEST_PACKAGES := dunst:dunst Xvfb:xvfb
test-deps:
	@missing=""; for p in $(TEST_PACKAGES); do command -v $${p%%:*} >/dev/null || missing="$$missing $${p#*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "installing$$missing"; export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -qq --no-install-recommends $$missing >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; fi

## Prometheus and node_exporter, Debian's builds, for the test that graphs pyoomd's metrics in a real Prometheus:
## unpacked into .cache/ rather than installed, so that no service of theirs is started on the host.
TOOLS := .cache/tools
$(TOOLS)/usr/bin/prometheus:
	rm -rf $(TOOLS).tmp && mkdir -p $(TOOLS).tmp
	cd $(TOOLS).tmp && { apt-get download -qq -o APT::Sandbox::User=root prometheus prometheus-node-exporter || \
		{ apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root prometheus prometheus-node-exporter; }; }
	for deb in $(TOOLS).tmp/*.deb; do dpkg-deb -x $$deb $(TOOLS).tmp/root; done
	rm -rf $(TOOLS) && mv $(TOOLS).tmp/root $(TOOLS) && rm -rf $(TOOLS).tmp
test-tools: $(TOOLS)/usr/bin/prometheus

## Set up and run every test: lint, unit tests on fixture trees, real tests on this host's cgroups.
test: $(STAMP) user test-deps test-tools
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -v -rfEs tests

lint: $(STAMP)
	$(BIN)/ruff check .

## Install into its own virtual environment (its top-level packages never meet another distribution's), with
## the systemd unit and, if none is there yet, the shipped policy.
install: install-units user
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet .
	install -d -m 0755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/drop-in.d
	test -e $(DESTDIR)$(CONFDIR)/config.yaml || install -m 0644 config.yaml $(DESTDIR)$(CONFDIR)/config.yaml

## The unit (on systemd >= 253 with its notify-reload drop-in) and the bus policy of pyoomd's D-Bus interface.
install-units:
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DBUSDIR)
	install -m 0644 units/pyoomd.service $(DESTDIR)$(UNITDIR)/pyoomd.service
	install -m 0644 units/io.github.pyoomd1.conf $(DESTDIR)$(DBUSDIR)/io.github.pyoomd1.conf
	if [ "$(SYSTEMD_VERSION)" -ge 253 ] 2>/dev/null; then \
		install -d -m 0755 $(DESTDIR)$(UNITDIR)/pyoomd.service.d && \
		install -m 0644 units/pyoomd.service.d/notify-reload.conf $(DESTDIR)$(UNITDIR)/pyoomd.service.d/; \
	else \
		rm -f $(DESTDIR)$(UNITDIR)/pyoomd.service.d/notify-reload.conf; \
	fi
	@echo "installed; then: systemctl reload dbus; systemctl daemon-reload && systemctl enable --now pyoomd"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
