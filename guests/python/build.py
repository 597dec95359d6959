#!/usr/bin/env python3
"""Build a Python provider into a component the mcm-wasm sandbox loads.

    python3 build.py APP_DIR -o OUT.wasm [--wit WIT_DIR]

APP_DIR holds `pyproject.toml` ([project] name/version; [tool.mcm-wasm] module = the app
module, default "app"; provider = the provider name, default the project name; aliases =
optional comma-separated other names) and the app module, which defines `Driver` (see
mcm_wasm_sdk). Steps: componentize-py (`--stub-wasi`: the component imports only the
contract) with this directory's `mcm_wasm_sdk` on the path, then the `mcm-wasm:provider`
metadata section appended (name, version, contract), as the Rust SDK's macro embeds it.

componentize-py is looked up as $COMPONENTIZE_PY, on PATH, then in
$MCM_WASM_CACHE/py-venv (where `just guests` installs it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPONENTIZE_PY = "componentize-py==0.25.1"
SECTION = "mcm-wasm:provider"


def componentize_py() -> str:
    found = os.environ.get("COMPONENTIZE_PY") or shutil.which("componentize-py")
    if found:
        return found
    cache = Path(os.environ.get("MCM_WASM_CACHE", Path.home() / ".cache/mcm-wasm"))
    venv = cache / "py-venv/bin/componentize-py"
    if venv.exists():
        return str(venv)
    sys.exit(f"build.py: componentize-py not found; install it with `pip install '{COMPONENTIZE_PY}'` "
             f"(or run `just guests`, which installs it into {venv.parent.parent})")


def leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def custom_section(name: str, data: bytes) -> bytes:
    payload = leb128(len(name.encode())) + name.encode() + data
    return b"\x00" + leb128(len(payload)) + payload


def contract_version() -> str:
    sys.path.insert(0, str(HERE))
    text = (HERE / "mcm_wasm_sdk/__init__.py").read_text()
    line = next(l for l in text.splitlines() if l.startswith("CONTRACT_VERSION"))
    return line.split("=", 1)[1].strip().strip('"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--wit", type=Path, default=HERE.parent.parent / "wit",
                        help="the contract's WIT directory (default: the repository's wit/)")
    args = parser.parse_args()

    project_file = args.app_dir / "pyproject.toml"
    if not project_file.exists():
        sys.exit(f"build.py: {project_file} not found (it names the provider and its version)")
    project = tomllib.loads(project_file.read_text())
    tool = project.get("tool", {}).get("mcm-wasm", {})
    name = tool.get("provider") or project["project"]["name"]
    version = project["project"]["version"]
    module = tool.get("module", "app")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp.wasm")
    cmd = [componentize_py(), "--quiet", "-d", str(args.wit), "-w", "provider", "componentize",
           "--stub-wasi", "-p", str(args.app_dir), "-p", str(HERE), module, "-o", str(tmp)]
    print(f"build.py: componentize-py {module} ({name} {version}) -> {args.output}", file=sys.stderr)
    subprocess.run(cmd, check=True)

    metadata = {"name": name, "version": version, "contract": contract_version()}
    if tool.get("aliases"):
        metadata["aliases"] = tool["aliases"]
    with open(tmp, "ab") as f:
        f.write(custom_section(SECTION, json.dumps(metadata, separators=(",", ":")).encode()))
    tmp.replace(args.output)


if __name__ == "__main__":
    main()
