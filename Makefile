# standin: `make demo` runs the example cluster, `make test` runs the tests.
# Both install what a fresh machine lacks first (`make deps`).

CARGO ?= cargo
DEMO_ARGS ?=

.PHONY: deps demo test verify lint fmt doc bench

# protoc is needed by etcd-client's build; etcd and etcdctl by the tests and the demo.
deps:
	@bash scripts/deps.sh

demo: deps
	$(CARGO) run --release --example cluster -- $(DEMO_ARGS)

test: deps
	$(CARGO) test --all-targets
	$(CARGO) test --doc

# Changes nothing: formatting check, lints with warnings denied, tests, docs.
verify: lint test doc

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

fmt:
	$(CARGO) fmt --all
