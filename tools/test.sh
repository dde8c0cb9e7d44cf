#!/usr/bin/env bash
# README command 2: set up a fresh machine, then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# pyocd too, so that the tests of `rrgen flash` run its real no-probe path.
python3 -m pip install -q -e ".[flash]"
export RRGEN_REQUIRE_TOOLS=1   # a missing compiler or QEMU fails the suite instead of skipping
python3 -m pytest -q tests "$@"
