# mcm-wasm tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Control plane (etcd, kube-apiserver, kubectl, Gardener MCM) and CRD generation recipes.
import? 'kubernetes/kubernetes.just'

# List the recipes.
default:
    @just --list

# Where installed tools and build caches live (outside the checkout).
cache := env_var_or_default("MCM_WASM_CACHE", env_var("HOME") + "/.cache/mcm-wasm")

# Install everything ahead of time (what `just run` and `just test` otherwise install on
# their first run), and build the guests.
setup: prereqs guests

# What `just run` and `just test` need and this machine lacks, installed step by step (a step
# already done is skipped in milliseconds): the wasm32-wasip2 target, moto, componentize-py,
# an OCI registry, the control plane and Gardener's MCM (built from Go; the longest step).
prereqs:
    #!/usr/bin/env bash
    set -euo pipefail
    step() { echo "prereqs [$1/6] $2"; }
    fail() { echo "error: $*" >&2; exit 1; }
    command -v python3 >/dev/null || fail "python3 is not installed (moto, the sample backend and componentize-py need it)"
    command -v go >/dev/null || fail "Go is not installed (the control plane and Gardener's MCM are built from Go modules; install Go >= 1.26)"
    if ! command -v make >/dev/null; then
        # Gardener's integration suite starts both controllers with `make start`, as in a provider repository.
        echo "prereqs: installing make (Gardener's integration suite runs 'make start')"
        { [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq --no-install-recommends make >/dev/null; } \
            || fail "make is not installed and could not be installed (apt-get install make)"
    fi
    step 1 "wasm32-wasip2 Rust target (guests)"
    if [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ]; then
        echo "  already installed"
    elif command -v rustup >/dev/null && rustup target add wasm32-wasip2; then
        echo "  installed"
    elif [ -n "${MCM_WASM_RUST_STD_FALLBACK:-}" ]; then
        echo "  rustup could not add it; unpacking $MCM_WASM_RUST_STD_FALLBACK/rust-std-*-wasm32-wasip2.tar.xz"
        (cd "$MCM_WASM_RUST_STD_FALLBACK" && sha256sum -c --quiet SHA256SUMS)
        tar -xJf "$MCM_WASM_RUST_STD_FALLBACK"/rust-std-*-wasm32-wasip2.tar.xz -C "$(rustc --print sysroot)/lib/rustlib/"
        [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ] || fail "the fallback did not provide wasm32-wasip2"
    else
        fail "cannot install the wasm32-wasip2 target: run 'rustup target add wasm32-wasip2' (or set MCM_WASM_RUST_STD_FALLBACK to a directory with rust-std-<version>-wasm32-wasip2.tar.xz and SHA256SUMS)"
    fi
    step 2 "moto (EC2 API server for tests)"
    just moto
    step 3 "componentize-py (builds Python providers)"
    just componentize-py
    step 4 "OCI registry (CNCF Distribution)"
    just registry
    step 5 "control plane: etcd, kube-apiserver, kubectl, Gardener MCM (from Go; many minutes the first time)"
    just controlplane
    step 6 "done"

# moto's EC2 server in its own venv ({{cache}}/moto-venv); tests find it there.
moto:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="{{cache}}/moto-venv"
    if [ -x "$venv/bin/moto_server" ]; then echo "moto: already installed in $venv"; exit 0; fi
    echo "moto: installing into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'moto[server]>=5.1,<6'
    "$venv/bin/moto_server" --help >/dev/null && echo "moto: ok"

# componentize-py (PyPI), which builds Python providers, in its own venv ({{cache}}/py-venv).
componentize-py:
    #!/usr/bin/env bash
    set -euo pipefail
    venv="{{cache}}/py-venv"
    if [ -x "$venv/bin/componentize-py" ]; then echo "componentize-py: already installed in $venv"; exit 0; fi
    echo "componentize-py: installing 0.25.1 into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'componentize-py==0.25.1'
    "$venv/bin/componentize-py" --version

# A real OCI registry (CNCF Distribution) for tests and `just run`: Debian's docker-registry when
# apt can install it, else built from Go into {{cache}}/registry (a few minutes).
registry:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v docker-registry >/dev/null || [ -x "{{cache}}/registry/bin/registry" ]; then echo "registry: already installed"; exit 0; fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "registry: installing Debian's docker-registry"
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-registry >/dev/null; then
            docker-registry --version && exit 0
        fi
        echo "registry: apt-get could not install docker-registry; building from Go instead" >&2
    fi
    echo "registry: building CNCF Distribution v3.1.2 into {{cache}}/registry"
    GOBIN="{{cache}}/registry/bin" go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2
    "{{cache}}/registry/bin/registry" --version

# Build every guest component: the Rust ones (wasm32-wasip2, release: small and fast) and the
# Python sample (componentize-py, rebuilt only when guests/python or wit/ changed).
guests: python-guests
    @[ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-wasip2" ] || { echo "error: the wasm32-wasip2 target is missing: run 'just prereqs' (or 'rustup target add wasm32-wasip2')" >&2; exit 1; }
    cargo build --release --target wasm32-wasip2 --manifest-path guests/Cargo.toml

# The Python sample provider (guests/python/sample -> target/wasm32-wasip2/release/sample_py.wasm).
python-guests: componentize-py
    #!/usr/bin/env bash
    set -euo pipefail
    out=target/wasm32-wasip2/release/sample_py.wasm
    if [ -f "$out" ] && [ -z "$(find guests/python wit -newer "$out" -type f -not -name '*.pyc' | head -1)" ]; then exit 0; fi
    python3 guests/python/build.py guests/python/sample -o "$out"

# The main job: a local control plane (or $KUBECONFIG), moto, Gardener MCM and the controller with
# the AWS provider; the examples' machines to Running. Ctrl-C stops everything.
# Flags: --exit-when-running, --no-gardener-mcm, --timeout-secs N.
run *args: prereqs guests
    cargo build --workspace --bins
    target/debug/mcm-wasm-stack {{args}}

# Run all tests (installing what this machine lacks first): guests run in the real sandbox;
# the controller image is built first (a test pushes it to a local registry and runs it).
test: prereqs guests image
    cargo test --manifest-path guests/Cargo.toml -p aws-provider
    cargo test --workspace --no-fail-fast

# runtime/cli/tests/chaos.rs: a MachineDeployment scaled 0 -> N -> N/6 -> 0 through 10 % EC2
# faults, three controller SIGKILLs and an API server restart. `just test` runs it with 30
# machines; `just chaos 300 SEED` repeats a run.
# The chaos run: N machines through faults, kills and an API server restart; prints its table.
chaos machines="300" seed="": prereqs guests
    MCM_WASM_CHAOS_MACHINES={{machines}} MCM_WASM_CHAOS_SEED={{seed}} cargo test -p mcm-wasm --test chaos -- --nocapture

# fuzz/: cargo-fuzz + libFuzzer (nightly, for the sanitizer). Targets: artifact bytes (inspect
# + load), the egress allowlist and URL check, request JSON for every operation, the AWS
# provider's providerSpec and EC2 XML. Findings are kept in fuzz/artifacts/<target>/.
# Fuzz every input parser for SECONDS each; prints runs and coverage per target.
fuzz seconds="60": guests
    #!/usr/bin/env bash
    set -euo pipefail
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    cd fuzz
    mkdir -p corpus/artifact
    cp ../target/wasm32-wasip2/release/*.wasm corpus/artifact/
    cargo +nightly fuzz build -O
    printf '\n| target | runs | seconds | coverage (edges) | features | crashes |\n|---|---:|---:|---:|---:|---:|\n' > ../target/fuzz-table.md
    for t in artifact egress request_json aws_spec aws_xml; do
        mkdir -p corpus/$t
        [ -d seeds/$t ] && cp -n seeds/$t/* corpus/$t/ 2>/dev/null || true
        echo "fuzz: $t for {{seconds}} s"
        status=0
        cargo +nightly fuzz run -O $t corpus/$t -- -max_total_time={{seconds}} -print_final_stats=1 > ../target/fuzz-$t.log 2>&1 || status=$?
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' ../target/fuzz-$t.log | grep -o '[0-9]*$' || echo 0)
        cov=$(grep -o 'cov: [0-9]*' ../target/fuzz-$t.log | tail -1 | grep -o '[0-9]*' || echo 0)
        ft=$(grep -o 'ft: [0-9]*' ../target/fuzz-$t.log | tail -1 | grep -o '[0-9]*' || echo 0)
        crashes=$(ls artifacts/$t 2>/dev/null | wc -l)
        echo "| $t | $runs | {{seconds}} | $cov | $ft | $crashes |" >> ../target/fuzz-table.md
        [ $status -eq 0 ] || echo "fuzz: $t stopped with a finding (exit $status): see target/fuzz-$t.log and fuzz/artifacts/$t/"
    done
    cat ../target/fuzz-table.md

# Benchmarks: prints tables (see BENCHMARKS.md for recorded figures).
# `just bench --machines 1000`: the controller benchmark with 1000 machines (default 100).
bench *args: prereqs guests
    cargo bench -p mcm-sandbox --bench sandbox
    cargo bench -p mcm-sandbox --bench aws
    cargo bench -p mcm-providers --bench providers
    cargo bench -p mcm-wasm --bench controller -- {{args}}

# The controller image (kubernetes/image/Containerfile): a static mcm-wasm (musl) on scratch,
# built with buildah (or podman). `just image registry.example.com/mcm-wasm:v0.1.0`, then push it.
image tag="mcm-wasm:dev":
    #!/usr/bin/env bash
    set -euo pipefail
    rustup target add x86_64-unknown-linux-musl
    if ! command -v musl-gcc >/dev/null; then
        echo "image: installing musl-tools (aws-lc and ring compile C for the static binary)"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
    fi
    CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target x86_64-unknown-linux-musl -p mcm-wasm
    ctx="$(mktemp -d)"; trap 'rm -rf "$ctx"' EXIT
    cp target/x86_64-unknown-linux-musl/release/mcm-wasm "$ctx/"
    strip "$ctx/mcm-wasm"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    if ! command -v buildah >/dev/null && ! command -v podman >/dev/null; then
        echo "image: installing buildah (builds OCI images without a daemon)"
        apt-get update -qq && apt-get install -y -qq --no-install-recommends buildah >/dev/null \
            || { echo "image: needs buildah or podman (apt-get install buildah)" >&2; exit 1; }
    fi
    if command -v buildah >/dev/null; then builder=(buildah bud --quiet); else builder=(podman build --quiet); fi
    "${builder[@]}" -f kubernetes/image/Containerfile -t "{{tag}}" "$ctx"
    echo "image: {{tag}} ($(du -h "$ctx/mcm-wasm" | cut -f1) binary)"

# Build the mcm-wasm binary (release).
build:
    cargo build --release -p mcm-wasm

# Format and lint.
lint:
    just crds-check
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
