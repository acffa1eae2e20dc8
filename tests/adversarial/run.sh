#!/usr/bin/env bash
# Try to break every twin command: runs every adversarial case, prints the table and writes
# tests/adversarial/RESULTS.md. Extra arguments go to run.py (-k PATTERN, --fast, --list, --keep).
set -uo pipefail
cd "$(dirname "$0")/../.."
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
exec python tests/adversarial/run.py "$@"
