# standin: `make demo` runs the example cluster, `make test` runs the tests.
# Both install what a fresh machine lacks first (`make deps`).

CARGO ?= cargo
DEMO_ARGS ?=
CAMPAIGN_ARGS ?=
BENCH_ARGS ?=

.PHONY: deps demo test verify lint fmt doc bench campaign image manifests

# protoc is needed by etcd-client's build; etcd and etcdctl by the tests and
# the demo; podman, podman-compose, helm, kubernetes-validate and
# systemd-analyze by the deployment tests (tests/compose.rs, helm.rs, deploy.rs).
deps:
	@bash scripts/deps.sh
	@bash scripts/deploy-deps.sh

demo: deps
	$(CARGO) run --release --example cluster -- $(DEMO_ARGS)

test: deps
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

# The long fault campaign (tools/src/campaign/): 1000 seeded random faults on
# the leaders of three `standin run --role tso --role kv` processes, then a
# check of the history (about 25 minutes).
# CAMPAIGN_ARGS="--seed S" replays a run's faults; a later --faults wins;
# "--etcd-members 3" runs it against a 3-member etcd with etcd's own faults;
# "--stall-clock" adds a pause the lease clock cannot see (violations unless
# "--confirm-answers" runs the nodes with coordinator.confirmAnswers).
campaign: deps
	$(CARGO) build --release --features cli --bin standin
	$(CARGO) run --release -p standin-tools --bin campaign -- --faults 1000 $(CAMPAIGN_ARGS)

# Takeover times side by side with their anchors, in one run on one etcd
# (tools/src/bin/bench/): graceful handover and coordinator crash against
# `etcdctl elect`, kill -9 with the death witness against it off, and kill -9
# of a host gone dark, takeovers by metadata size up to 1M keys, the herd
# (2 vs 50 standbys) and many roles per node (about 20 minutes).
# BENCH_ARGS="--rounds N --slow-rounds M"; scenario=many-roles or
# scenario=herd runs only that one.
bench: deps
	$(CARGO) build --release --features cli --bin standin
	$(CARGO) run --release -p standin-tools --bin bench -- $(BENCH_ARGS) $(if $(scenario),--scenario $(scenario))

# The container images, FROM scratch: localhost/standin (the release
# binary) and localhost/standin-etcd (Debian's etcd), for deploy/compose.
image: deps
	$(CARGO) build --release --features cli --bin standin
	deploy/image.sh standin target/release/standin localhost/standin:latest
	deploy/image.sh etcd "$$(command -v etcd)" localhost/standin-etcd:latest

# deploy/kubernetes/standin.yaml: the chart rendered with existing secrets.
MANIFEST_SETTINGS = --namespace standin --set witness.existingSecret=standin-witness --set api.existingSecret=standin-api
manifests: deps
	{ sed -n '1,/^---$$/p' deploy/kubernetes/standin.yaml; \
	  helm template standin deploy/helm/standin $(MANIFEST_SETTINGS) | sed '1{/^---$$/d}'; } > deploy/kubernetes/standin.yaml.new
	mv deploy/kubernetes/standin.yaml.new deploy/kubernetes/standin.yaml

# Changes nothing: formatting check, lints with warnings denied, tests, docs.
verify: lint test doc

# Every target with the features tests use, then the library as an
# embedder builds it (default features), which must stand on its own.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings
	$(CARGO) clippy --lib --features grpc -- -D warnings

doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --all-features

fmt:
	$(CARGO) fmt --all
