#!/usr/bin/env bash
# Build the documentation site from docs/ (Sphinx + MyST, API pages from the docstrings,
# the CLI reference from the argparse parsers) with every warning an error, then check
# every link of the result (tools/check_site_links.py). CI runs this after installing the
# package; a developer tree with the engine built in place works too (docs/conf.py says
# which usl_fast it documents).
#
# The pinned tools (docs/requirements.txt) are installed into a folder of their own,
# docs/_build/tools, put first on PYTHONPATH for the build only: the build runs with the
# python3 that runs this script (or $PYTHON), so it imports the usl_fast installed there
# (with numpy and torch, which the API pages of usl_fast.uslt / .distributed / .ssl need),
# and installing Sphinx changes nothing in the environment the tests run in. (A virtual
# environment would not do: one made from inside another venv sees only the base
# interpreter's packages, not the usl_fast installed in that venv.)
#   PYTHON=.venv/bin/python bash tools/build_docs.sh   # another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=docs/_build
TOOLS=$OUT/tools
start=$(date +%s)

# Reinstalled only when docs/requirements.txt changes.
if ! cmp -s docs/requirements.txt "$TOOLS/.requirements.txt"; then
    rm -rf "$TOOLS"
    # --no-warn-conflicts: pip compares the target with the environment's own packages
    # (e.g. awscli's docutils<=0.19), which this build shadows and never changes.
    "$PY" -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
        --target "$TOOLS" -r docs/requirements.txt
    cp docs/requirements.txt "$TOOLS/.requirements.txt"
fi
export PYTHONPATH="$PWD/$TOOLS${PYTHONPATH:+:$PYTHONPATH}"

rm -rf "$OUT/html" "$OUT/doctrees"
# -W --keep-going: every warning fails the build, all of them reported; -n: nitpicky (every
# cross-reference must resolve, docs/conf.py lists the exceptions); -E: no stale state.
"$PY" -m sphinx -b html -W --keep-going -n -E -q \
    -d "$OUT/doctrees" docs "$OUT/html"
"$PY" tools/check_site_links.py "$OUT/html"
echo "build_docs: site in $OUT/html/index.html ($(( $(date +%s) - start )) s)"
