# mcm-wasm tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Control plane (etcd, kube-apiserver, kubectl, Gardener MCM) and CRD generation recipes.
import? 'kubernetes/kubernetes.just'

# List the recipes.
default:
    @just --list

# Install what a fresh machine lacks: the wasm target, moto, and the control-plane binaries.
setup:
    rustup target add wasm32-wasip2
    just guests

# Build every guest component (wasm32-wasip2, release: small and fast).
guests:
    cargo build --release --target wasm32-wasip2 --manifest-path guests/Cargo.toml

# Run all tests: guests run in the real sandbox.
test: guests
    cargo test --workspace --no-fail-fast 2>&1

# Benchmarks: prints a table (see BENCHMARKS.md for recorded figures).
bench: guests
    cargo bench -p mcm-wasm --bench sandbox

# Build the mcm-wasm binary (release).
build:
    cargo build --release -p mcm-wasm

# Format and lint.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings
