#!/usr/bin/env bash
# The project's test command (README "Tests"): package in sync with the notebooks, notebooks clean,
# the notebooks' own checks (nbdev_test), then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PREFIXREP_DATA_DIR="${PREFIXREP_DATA_DIR:-$(cd .. && pwd)/shared/data}"

state() { git status --porcelain -- "$@"; git diff -- "$@" | sha1sum; }   # catches further edits to modified files too

echo "== nbdev_export leaves prefixrep/ unchanged"
before=$(state prefixrep)
nbdev_export
[ "$before" = "$(state prefixrep)" ] || { echo "prefixrep/ is out of sync with nbs/: run nbdev_export and commit" >&2; git diff --stat; exit 1; }

echo "== nbdev_clean leaves the notebooks unchanged"
before=$(state nbs)
nbdev_clean
[ "$before" = "$(state nbs)" ] || { echo "notebooks are not clean: run nbdev_clean and commit" >&2; git diff --stat; exit 1; }

echo "== nbdev_test (notebook checks; '#| slow' cells skipped)"
nbdev_test --n_workers 1 --timing

echo "== pytest"
python -m pytest -q "$@"
