#!/bin/bash
# Real records of every kind the workloads write, kept for tests/unit/test_records.py and
# test_compare_export.py (a model change that real records no longer satisfy fails those tests).
# Regenerate after a record change: tests/unit/records/regenerate.sh [NAME...] (all: about 15 CPU minutes;
# names: the records' file names without .json).
set -u
cd "$(dirname "$0")/../../.."
out=tests/unit/records
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export SCALELAB_NO_PROGRESS=1 SCALELAB_CACHE=$tmp/cache
unset RAY_ADDRESS
py=.venv/bin/python
$py -c "from workloads import data; data.generate('tiny', '$tmp')" >/dev/null
in=$tmp/tiny.csv
only=" $* "
run() {  # NAME MODULE ARGS...: the record of one local run (a failed run writes a failed record)
  local name=$1; shift
  [ "$only" = "  " ] || [[ "$only" == *" $name "* ]] || return 0
  $py -m "$@" --output "$out/$name.json" >"$tmp/$name.log" 2>&1 || echo "$name: exit $? (a failed record is expected only for *-failed)"
}
run pagerank-reference workloads.pagerank --framework reference --workers 1 --input "$in" --dataset tiny
run pagerank-torch workloads.pagerank --framework torch --workers 2 --input "$in" --dataset tiny --verify
run pagerank-torch-maxiter5 workloads.pagerank --framework torch --workers 2 --input "$in" --dataset tiny --verify --max-iter 5
run pagerank-ray workloads.pagerank --framework ray --workers 2 --input "$in" --dataset tiny --verify
run pagerank-failed workloads.pagerank --framework torch --workers 2 --input "$tmp/missing.csv" --dataset tiny
run kmeans-global-torch workloads.kmeans --framework torch --workers 2 --input "$in" --dataset tiny --verify
run kmeans-blockwise-reference workloads.kmeans --framework reference --workers 1 --input "$in" --dataset tiny --method blockwise
run xgboost-reference workloads.xgboost --framework reference --threads 1
run xgboost-ray workloads.xgboost --framework ray --workers 2 --threads 1 --storage "$tmp/ray"
run pneumonia-torch workloads.pneumonia --framework torch --workers 2 --threads 1 --image-size 64 --epochs 1 --seed 0
run cifar-pbt-ray workloads.cifar_pbt --framework ray --workers 2 --threads 1 --trials 2 --epochs 1 --perturbation-interval 1 --storage "$tmp/ray"
