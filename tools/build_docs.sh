#!/usr/bin/env bash
# Build the documentation site from docs/ (Sphinx + MyST, API pages from the docstrings,
# the CLI reference from the argparse parsers) with every warning an error, then check
# every link of the result (tools/check_site_links.py). CI runs this after installing the
# package; a developer tree with the engine built in place works too (docs/conf.py says
# which usl_fast it documents).
#
# The pinned tools (docs/requirements.txt) go into a virtual environment of their own,
# docs/_build/venv, which also sees the packages of the python3 that runs this script
# (usl_fast, numpy, and torch, which the API pages of usl_fast.uslt / .distributed / .ssl
# import): installing Sphinx must not change the environment the tests run in.
#   PYTHON=python3.12 bash tools/build_docs.sh   # another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=docs/_build
VENV=$OUT/venv
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r docs/requirements.txt

rm -rf "$OUT/html" "$OUT/doctrees"
# -W --keep-going: every warning fails the build, all of them reported; -n: nitpicky (every
# cross-reference must resolve, docs/conf.py lists the exceptions); -E: no stale state.
"$VENV/bin/python" -m sphinx -b html -W --keep-going -n -E -q \
    -d "$OUT/doctrees" docs "$OUT/html"
"$VENV/bin/python" tools/check_site_links.py "$OUT/html"
echo "build_docs: site in $OUT/html/index.html ($(( $(date +%s) - start )) s)"
