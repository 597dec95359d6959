#!/usr/bin/env bash
# Build the provider component: {{name}}.wasm (needs componentize-py: pip install 'componentize-py==0.25.1').
set -euo pipefail
cd "$(dirname "$0")"
python3 build.py . -o {{name}}.wasm --wit wit
echo "build.sh: {{name}}.wasm ($(wc -c <{{name}}.wasm) bytes)" >&2
