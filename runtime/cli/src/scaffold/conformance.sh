#!/usr/bin/env bash
# Build the provider, start the local backend (backend.py) on a free loopback port, and run
# `mcm-wasm conformance` against it with the manifests in conformance/. Extra arguments go to
# `mcm-wasm conformance` (e.g. --junit report.xml). MCM_WASM names the binary (default: mcm-wasm).
set -euo pipefail
cd "$(dirname "$0")"
./build.sh
coproc backend { exec python3 backend.py --port 0 --token local-token; }
trap 'kill "$backend_PID" 2>/dev/null || true' EXIT
read -r line <&"${backend[0]}"
endpoint="${line#listening on }"
echo "conformance.sh: backend at $endpoint" >&2
"${MCM_WASM:-mcm-wasm}" conformance {{name}}.wasm \
    --class conformance/machine-class.yaml --secret conformance/secret.yaml \
    --config "{\"endpoint\": \"$endpoint\"}" "$@"
