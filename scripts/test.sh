#!/usr/bin/env bash
# The test command of the README: installs what the tests need (scripts/setup.sh), then runs
# every test of the workspace. Kernel tests run when we are root; they skip with a visible
# SKIP line otherwise, unless POLC_REQUIRE_KERNEL=1 makes them required (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test --workspace "$@"
