# Two entry points a newcomer needs; both create .venv and install on first use.
#   make serve   start Veil (gateway :8080 + one node) on the embedded models
#   make test    run the whole test suite (real models, real servers and a real browser on loopback)

# `pip install veil` alone is the client; serving and testing need the node and gateway extras.
PYTHON ?= python3
VENV   := .venv
EXTRAS := all,test
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

# The web console's tests drive Debian's chromium with npm's playwright-core; .ci/web installs both
# (once: the stamp follows web/package-lock.json) and checks the shipped bundle is what web/ builds.
WEB_STAMP := web/node_modules/.veil-installed

.PHONY: serve test lint install clean web

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/veil serve $(ARGS)

$(WEB_STAMP): web/package-lock.json
	bash .ci/web
	@touch $@

test: $(STAMP) $(WEB_STAMP)
	$(VENV)/bin/python -m pytest $(ARGS)

# Rebuild the console bundle (src/veil/console/static) from web/ after changing its source.
web:
	cd web && npm ci --no-audit --no-fund && npm run build

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache web/node_modules
