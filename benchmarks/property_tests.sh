#!/usr/bin/env bash
# The larger hypothesis run of tests/test_properties.py (the default suite runs a fixed set of 15 examples per
# property).  Usage: bash benchmarks/property_tests.sh [pytest args]; HESSOP_PROPERTY_EXAMPLES sets the number of
# examples per property (default 200).  Results and timings: docs/reliability.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
HESSOP_PROPERTY_PROFILE=thorough HESSOP_PROPERTY_EXAMPLES="${HESSOP_PROPERTY_EXAMPLES:-200}" \
    python3 -m pytest -q -p no:cacheprovider tests/test_properties.py --hypothesis-show-statistics "$@"
