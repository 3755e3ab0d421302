"""Check that submitit reaches the cluster started by start_cluster.sh.

    python benchmarks/slurm/check_submitit.py [--partition debug] [--folder DIR]

Submits one job and a 4-task array with the options Hydra's submitit launcher
uses (partition, timeout, cpus per task, memory), waits for the results, and
prints each job's id and state. Exit status 0 when every result is right.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time


def final_state(job, wait_s: float = 60.0) -> str:
    """The job's Slurm state once it has left RUNNING/COMPLETING (the result
    file is written just before the job ends)."""
    deadline = time.monotonic() + wait_s
    while True:
        state = job.watcher.get_state(job.job_id, mode="force")
        if state not in ("PENDING", "RUNNING", "COMPLETING", "UNKNOWN") or time.monotonic() > deadline:
            return state
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition", default="debug")
    parser.add_argument("--folder", default=None, help="submitit folder (default: a temporary one)")
    args = parser.parse_args()

    import submitit

    folder = args.folder or tempfile.mkdtemp(prefix="elastic-submitit-")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=args.partition, timeout_min=5, cpus_per_task=1, mem_gb=1)

    job = executor.submit(sum, [1, 2])
    result = job.result()
    print(f"job {job.job_id}: sum([1, 2]) = {result} ({final_state(job)})")
    ok = result == 3

    jobs = executor.map_array(pow, [2, 3, 4, 5], [2, 2, 2, 2])
    results = [j.result() for j in jobs]
    states = [final_state(j) for j in jobs]
    print(f"array {[j.job_id for j in jobs]}: {results} {states}")
    ok = ok and results == [4, 9, 16, 25]
    # Without accounting (ELASTIC_SLURM_ACCOUNTING=0) sacct fails and states stay UNKNOWN.

    print(f"submitit folder: {folder}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
