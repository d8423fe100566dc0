# The two commands of the README: `make demo` and `make test`. Both set up everything they need
# on a fresh Debian machine: system packages (when missing), a virtualenv, pinned Python packages.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: e2fsprogs (mkfs.ext4, debugfs) for demo and tests; fuse and libfuse2 for
# `lamina mount` (never fuse3: it conflicts with fuse); postgresql for the catalog tests (their
# fixture starts a throwaway cluster with its initdb and pg_ctl); etcd-server, openssl and curl
# for the loopback Kubernetes control plane of the controller tests.
SYSTEM_PACKAGES := e2fsprogs xfsprogs fuse libfuse2 postgresql etcd-server openssl curl
BENCH_PACKAGES := restic borgbackup
PYTEST_ARGS ?=
# pytest-xdist workers. Most tests wait on processes and servers they start, so three share the
# two cores well; tests of the one real Kubernetes control plane run on one worker (loadgroup).
TEST_WORKERS ?= 3

.PHONY: test demo lint proto manifests bench screenshots system-packages clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "lamina needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV) || { $(MAKE) apt PKGS=python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

system-packages:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then $(MAKE) --no-print-directory apt PKGS="$$missing"; fi

apt:
	@echo "installing Debian packages:$(PKGS)"
	@SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(PKGS) >/dev/null

test: system-packages $(STAMP)
	LAMINA_NO_SKIPS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=25 $(PYTEST_ARGS)

demo: system-packages $(STAMP)
	$(VENV)/bin/lamina demo

# mypy cannot follow setuptools' package-dir mapping, so it checks a tree of symlinks that
# has the installed layout (lamina/backend -> backend, ...).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf build/typecheck && mkdir -p build/typecheck/lamina
	for d in backend fs tui protos; do ln -s ../../../$$d build/typecheck/lamina/$$d; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p lamina -p tests

proto: $(STAMP)
	$(PY) protos/generate.py

# deploy/: the data mover's examples and the CRDs, generated from backend/kube/ (tests diff them)
manifests: $(STAMP)
	$(PY) -m lamina.backend.kube.datamover deploy
	$(PY) -m lamina.backend.kube.crds deploy/crds.yaml
	$(PY) -m lamina.backend.kube.controller_deploy deploy/controller.yaml

bench: $(STAMP)
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(SYSTEM_PACKAGES) $(BENCH_PACKAGES)"
	$(PY) bench/run.py $(BENCH_ARGS)

screenshots: $(STAMP)
	$(PY) tui/screenshots.py

clean:
	rm -rf $(VENV) demo build *.egg-info
