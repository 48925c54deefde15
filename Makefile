# Every target here is what CI runs, one to one (.ci/run calls `make ci`).
#
#   make run     serve on the embedded SQLite store with the example catalog (published, so
#                an edited file takes effect at the next `make run`)
#   make test    every test on SQLite, and on PostgreSQL too when SUBLEDGER_TEST_POSTGRES_URL is set
#   make lint    rustfmt and clippy, warnings denied
#   make scenarios  every scenario file through the CLI, in every delivery mode
#   make ci      lint + test + scenarios
#   make bench   the worker beside its store's floor (release build; not part of `make ci`),
#                on SQLite and, with SUBLEDGER_TEST_POSTGRES_URL, PostgreSQL; writes docs/benchmarks.md
#   make bench-smoke  the same paths at tiny sizes in a debug build, as CI runs it (about a minute)
#   make fuzz    every fuzz target for FUZZ_SECS seconds (default 60; a nightly toolchain and
#                cargo-fuzz); make fuzz-ci: the short pass CI runs (the light targets, 10 s each)
#   make alerts  promtool check rules and test rules on deploy/prometheus (Debian's prometheus)
#   make deny    cargo deny (cargo install cargo-deny): licences, sources, duplicates and the
#                RustSec advisories of deny/advisory-db.tar.gz, offline; make deny-latest: the
#                live advisory database (needs GitHub)

CARGO ?= cargo
CATALOG ?= catalog.example.yaml
# A development secret so `make run` accepts locally signed webhooks out of the box. For
# `stripe listen`, export the whsec_... it prints as SUBLEDGER_WEBHOOK_SECRETS instead.
SUBLEDGER_WEBHOOK_SECRETS ?= whsec_subledger_local_development
export SUBLEDGER_WEBHOOK_SECRETS

.PHONY: run worker migrate test lint fmt ci build scenarios bench bench-smoke fuzz fuzz-ci deny deny-latest alerts

build:
	$(CARGO) build --workspace

run:
	$(CARGO) run -p subledger-cli -- serve --catalog $(CATALOG) --catalog-publish

worker:
	$(CARGO) run -p subledger-cli -- worker --catalog $(CATALOG)

migrate:
	$(CARGO) run -p subledger-cli -- migrate

test:
	@if [ -z "$$SUBLEDGER_TEST_POSTGRES_URL" ]; then \
	  echo "NOTE: PostgreSQL tests are SKIPPED (SUBLEDGER_TEST_POSTGRES_URL is not set)."; \
	  echo "      To run them: make test SUBLEDGER_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test"; \
	else \
	  echo "Running every test on SQLite and on PostgreSQL"; \
	fi
	$(CARGO) test --workspace
	@if [ -z "$$SUBLEDGER_TEST_POSTGRES_URL" ]; then \
	  echo "NOTE: only SQLite was tested; PostgreSQL tests were skipped."; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

ci: lint alerts test scenarios

# Every scenario through the CLI, in order and in shuffled-with-duplicates delivery.
scenarios:
	$(CARGO) run -q -p subledger-cli -- scenario run --delivery in-order
	$(CARGO) run -q -p subledger-cli -- scenario run --delivery shuffled --seed 1
	$(CARGO) run -q -p subledger-cli -- scenario run --delivery chaos --seed 1

# Not part of `ci`: it takes minutes and its figures only mean something on a quiet machine.
BENCH_ARGS ?=
bench:
	$(CARGO) run --release -q -p subledger-bench -- $(BENCH_ARGS)

# What CI runs of make bench: a debug build at tiny sizes, so every measured path still runs
# (the figures mean nothing at that size); the report goes to target/, not docs/.
bench-smoke:
	$(CARGO) run -q -p subledger-bench -- --rows 100 --history 600 --floor-secs 1 --subscribers 5 --out target/bench-smoke.md

FUZZ_SECS ?= 60
# Targets that need only the Stripe adapter and the domain; scenario_file also builds the
# engine and both database drivers, so only `make fuzz` runs it.
FUZZ_LIGHT := signature_header event_envelope translator catalog
# New inputs a run finds go to a scratch directory; fuzz/corpus/<target> holds the committed seeds.
FUZZ_WORK ?= $(or $(TMPDIR),/tmp)/subledger-fuzz

fuzz:
	for target in $(FUZZ_LIGHT) scenario_file; do \
		mkdir -p $(FUZZ_WORK)/$$target && \
		cargo +nightly fuzz run --features scenario $$target $(FUZZ_WORK)/$$target fuzz/corpus/$$target -- -max_total_time=$(FUZZ_SECS) || exit 1; \
	done

fuzz-ci:
	for target in $(FUZZ_LIGHT); do \
		mkdir -p $(FUZZ_WORK)/$$target && \
		cargo +nightly fuzz run $$target $(FUZZ_WORK)/$$target fuzz/corpus/$$target -- -max_total_time=10 || exit 1; \
	done

# cargo deny keeps the database of each URL in deny.toml's db-path under a directory named
# after the URL; the snapshot is unpacked where it looks for rustsec/advisory-db's.
ADVISORY_DB := target/advisory-dbs/advisory-db-3157b0e258782691

deny:
	rm -rf $(ADVISORY_DB) && mkdir -p $(ADVISORY_DB)
	tar -xzf deny/advisory-db.tar.gz -C $(ADVISORY_DB)
	@echo "advisories as of $$(cat deny/advisory-db.snapshot)"
	# Every crate of every platform deny.toml checks (the build fetched only this one's);
	# then cargo deny runs offline, which also keeps it from fetching the advisories.
	$(CARGO) fetch --locked
	$(CARGO) deny --offline check

deny-latest:
	rm -rf $(ADVISORY_DB)
	$(CARGO) deny check

alerts:
	promtool check rules deploy/prometheus/alerts.yml
	cd deploy/prometheus && promtool test rules alerts_test.yml
