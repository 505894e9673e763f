"""kill -9 mid-run, rerun: the output is byte-identical to an uninterrupted run (no loss, no duplicates)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from db_helpers import output_files, planted_config, write_config

from dataset_builder.testing import make_planted_records, write_img2dataset_shards


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dataset_builder", "build-dataset", "--config", str(config),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, pattern: str, work: Path, timeout: float = 60.0) -> bool:
    """SIGKILL the build as soon as a file matching `pattern` appears; False if it finished first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if list(work.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"no {pattern} after {timeout}s")


def test_kill_9_and_resume_gives_identical_output(tmp_path):
    rows, _ = make_planted_records()
    shards = write_img2dataset_shards(rows, tmp_path / "shards", n_shards=8)
    slow = {"embedder": {"kwargs": {"delay_s": 0.15}}, "expert": {"kwargs": {"delay_s": 0.15}},
            "records_per_partition": 10, "run_size": 5}
    clean_cfg = write_config(tmp_path / "clean.json", planted_config(shards, tmp_path / "clean", **slow))
    killed_cfg = write_config(tmp_path / "killed.json", planted_config(shards, tmp_path / "killed", **slow))
    work = tmp_path / "killed" / "work"

    kills = 0
    for pattern in ("ingest/*.done.json", "clusters/*.done.json", "dedupe/*.done.json", "shards/*.done.json"):
        proc = _start(killed_cfg)
        if _kill_when(proc, pattern, work):
            assert proc.returncode == -signal.SIGKILL
            kills += not (work / "complete.json").exists()
    assert kills >= 3, "the build finished before it could be killed"

    rerun = _start(killed_cfg)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err.decode()[-2000:]
    clean = _start(clean_cfg)
    _, err = clean.communicate(timeout=120)
    assert clean.returncode == 0, err.decode()[-2000:]

    a, b = output_files(tmp_path / "clean"), output_files(tmp_path / "killed")
    assert sorted(a) == sorted(b) and len(a) > 3
    for name in a:
        assert a[name] == b[name], f"{name} differs after kill and resume"
    assert not [p for p in (tmp_path / "killed").rglob("*") if ".tmp" in p.name]
    assert os.path.exists(work / "complete.json")
