"""The Slurm cluster from `.ci/slurm up` runs a trivial batch job to COMPLETED."""

from __future__ import annotations

from pathlib import Path

from slurm_cluster import SlurmCluster


def test_trivial_job_completes(slurm: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    job_id = slurm.submit(f"--output={out}", "--wrap", "echo hello-from-slurm")
    info = slurm.wait(job_id, timeout=60)
    assert info["JobState"] == "COMPLETED", info
    assert info["ExitCode"] == "0:0", info
    assert info["Partition"] == slurm.partition
    assert out.read_text().strip() == "hello-from-slurm"
