#!/usr/bin/env bash
# The real-Slurm check of issue 16: install and start a one-node cluster on this machine, then run the
# Slurm sweeps of tests/test_slurm.py (a 2-method training sweep, a 4-point threshold sweep, each one
# MLflow parent with every child finished) and show the jobs Slurm ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
ELASTIC_SLURM_CPUS=${ELASTIC_SLURM_CPUS:-4} benchmarks/slurm/start_cluster.sh
pytest -q -s -m "" tests/test_slurm.py
echo "--- the jobs Slurm ran (sacct, last hour)"
sacct -X --starttime "now-1hour" --format JobID,JobName%12,State,Elapsed,AllocCPUS,ReqMem 2>/dev/null | tail -20 || true
