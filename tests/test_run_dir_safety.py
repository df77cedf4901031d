"""Run directories under stress, with real processes: a second run on a locked directory,
Ctrl-C, a full disk while checkpointing, damaged checkpoints and torn logs on resume, and a
diverging learning rate. Each error is one line through the real CLI (a subprocess)."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import engine_overrides

from opdkit import cli
from opdkit.engine.metrics import read_metrics
from opdkit.models import checkpoint


def _opdkit(*args, preexec_fn=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "opdkit.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=preexec_fn, timeout=timeout)


def _one_line(result, code: int = 2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, \
        (result.returncode, result.stderr)
    return lines[0]


def _wait_for(predicate, what: str, seconds: float = 180) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_second_run_is_refused_at_once_and_ctrl_c_is_one_line(tiny_dir, tmp_path):
    run_dir = tmp_path / "r"
    long_run = engine_overrides(tiny_dir, run_dir, **{"optim.steps": 100000, "run.save_every": 2})
    # Ctrl-C must reach Python's handler even when this test runs in a background job (`pytest &`),
    # where the shell starts it, and so every child, with SIGINT ignored.
    first = subprocess.Popen([sys.executable, "-m", "opdkit.cli", "sft", *long_run], stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(lambda: checkpoint.latest(run_dir) is not None, "the first run's first checkpoint")
        second = _opdkit("sft", *long_run, "--resume", timeout=120)
        line = _one_line(second)
        assert f"in use by another run (pid {first.pid} " in line and "choose another run.out" in line
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    lines = [x for x in err.splitlines() if x.strip()]
    assert first.returncode == 130 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("opdkit: interrupted at step ") and "resume with --resume" in lines[0]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG, no kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def _first_checkpoint(tiny_dir, run_dir: Path) -> list[str]:
    overrides = engine_overrides(tiny_dir, run_dir, **{"optim.steps": 1})
    assert cli.main(["sft", *overrides]) == 0
    return overrides


def test_full_disk_file_size_limit_while_checkpointing(tiny_dir, tmp_path):
    """A real write failure (ulimit -f: EFBIG) under torch.save/safetensors, not a faked exception."""
    run_dir = tmp_path / "r"
    overrides = _first_checkpoint(tiny_dir, run_dir)
    size = (checkpoint.latest(run_dir) / "student.safetensors").stat().st_size
    result = _opdkit("sft", *overrides, "optim.steps=2", "--resume", preexec_fn=_file_size_limit(size // 2))
    line = _one_line(result)
    assert "could not write checkpoint step 2" in line and "the file-size limit was reached" in line
    assert "the newest intact checkpoint is" in line and "step_00000001" in line and "--resume" in line
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001"]        # no .tmp-step_* left
    assert cli.main(["sft", *overrides, "optim.steps=2", "--resume"]) == 0   # and the run goes on from it
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2]


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_tmpfs_while_checkpointing(tiny_dir, tmp_path):
    """ENOSPC from a real full filesystem (a tmpfs sized to hold one checkpoint and a bit)."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 8 << 20):
        pytest.skip("mounting a tmpfs needs root and a mount that allows it")
    try:
        run_dir = disk / "r"
        overrides = _first_checkpoint(tiny_dir, run_dir)
        st = os.statvfs(disk)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        size = (checkpoint.latest(run_dir) / "student.safetensors").stat().st_size
        subprocess.run(["mount", "-o", f"remount,size={used + size // 2}", str(disk)], check=True)
        line = _one_line(_opdkit("sft", *overrides, "optim.steps=2", "--resume"))
        assert "could not write checkpoint step 2" in line and "the disk is full" in line and "step_00000001" in line
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000001"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_resume_skips_a_damaged_checkpoint_and_torn_log_lines(tiny_dir, tmp_path):
    run_dir = tmp_path / "r"
    overrides = engine_overrides(tiny_dir, run_dir, **{"optim.steps": 2, "run.keep_checkpoints": 3})
    assert cli.main(["sft", *overrides]) == 0
    newest = checkpoint.latest(run_dir)
    weights = newest / "student.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])     # a disk fault after the rename
    for name in ("metrics.jsonl", "events.jsonl"):
        with open(run_dir / name, "a") as fh:
            fh.write('{"step": 3, "train/lo')                                      # killed mid-write
    report = _opdkit("report", run_dir, "--out", tmp_path / "report.html")
    assert report.returncode == 0 and "torn last line" in report.stderr, report.stderr
    result = _opdkit("sft", *overrides, "optim.steps=3", "--resume")
    assert result.returncode == 0, result.stderr
    assert "skipped damaged checkpoint step_00000002" in result.stderr
    assert result.stderr.count("dropped a torn last line") == 2
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1, 2, 3]      # 2 replayed from step 1
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]  # every line parses
    assert any(e["event"] == "resumed" and e["checkpoint"].endswith("step_00000001") for e in events)
    assert (run_dir / "checkpoints" / "damaged-step_00000002").is_dir()                   # kept, out of the way
    finished = _opdkit("sft", *overrides, "optim.steps=3", "--resume")
    assert finished.returncode == 0 and "already finished" in finished.stderr and "step 3" in finished.stderr


def test_divergence_is_caught_before_it_is_saved_and_resume_takes_a_new_lr(tiny_dir, tmp_path):
    run_dir = tmp_path / "r"
    overrides = _first_checkpoint(tiny_dir, run_dir)
    line = _one_line(_opdkit("sft", *overrides, "optim.steps=3", "optim.lr=1e30", "--resume"))
    assert "step 2 diverged" in line and "step_00000001" in line and "--resume optim.lr=1e-05" in line
    assert checkpoint.latest(run_dir).name == "step_00000001"                       # the bad step was not saved
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [1]      # nor logged
    assert cli.main(["sft", *overrides, "optim.steps=3", "optim.lr=1e-05", "--resume"]) == 0
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and [r["train/lr"] for r in rows[1:]] == [1e-05, 1e-05]
    history = yaml.safe_load((run_dir / "config.yaml").read_text())["changes"]
    assert [(c["key"], c["old"], c["new"], c["step"]) for c in history] == [
        ("optim.lr", 0.001, 1e30, 1), ("optim.lr", 1e30, 1e-05, 1)]
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "config_change" for e in events) == 2


def test_the_lock_dies_with_its_holder(tmp_path):
    """A SIGKILLed run leaves .lock behind, but not the lock: the next run takes the directory."""
    from opdkit.engine.rundir import RunLock
    from opdkit.errors import RunDirError
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from opdkit.engine.rundir import RunLock\n"
                               f"with RunLock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=f"pid {holder.pid} "):
            RunLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text().startswith(f"{os.getpid()} ")
