# e2train: the two everyday commands are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
E2TRAIN := target/release/e2train

.PHONY: all setup build run test lint lint-rust lint-rtl bench coverage estimate clean-runs

all: build

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --release -p e2train

# The main job: a short baseline run and an E2-Train run of the same recipe on the simulated board,
# then a table of accuracy, energy per epoch and the saving (see README).
run: build
	$(E2TRAIN) demo

test: setup lint
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

lint: lint-rust lint-rtl

lint-rust:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint-rtl:
	scripts/lint-rtl.sh

bench: build
	$(E2TRAIN) bench --model resnet8 --batch 128
	$(E2TRAIN) bench --model resnet20 --batch 128
	$(CARGO) bench --workspace

coverage: setup
	scripts/coverage.sh

estimate: setup
	scripts/estimate.sh
