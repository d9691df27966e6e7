#!/usr/bin/env bash
# The comparison for issue 27's closing note: lr 0.002 (params.yaml) against 0.004 on the embedded default job,
# 3 seeds each, as DVC experiments tracked in MLflow (6 trainings of 4-9 min on a 2-core CPU), then the paired
# comparison of the two groups (table, and JSON in reports/compare_lr.json) and a report against lr 0.002.
# Run in the project root: `bash benchmarks/compare_default.sh`. The experiments are named lr002-seed<k> and
# lr004-seed<k>; to run it again, `dvc exp remove lr002-seed0 lr002-seed1 ...` first.
set -euo pipefail
time fcos-exp seeds 3 --name lr002
time fcos-exp seeds 3 -S train.lr=0.004 --name lr004
dvc repro prepare                      # the test split the runs were scored on, in the workspace
mkdir -p reports
time fcos-exp compare --seeds lr002-seed2 lr004-seed2
fcos-exp compare --seeds lr002-seed2 lr004-seed2 --json > reports/compare_lr.json
time fcos-exp report --baseline lr002-seed2 --out reports/compare_lr
