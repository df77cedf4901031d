"""torchrun with 2 gloo processes on CPU equals one process with the same global batch.

Each test launches the real entry point (`torchrun -m opdkit.cli ...`) on the tiny pair and
compares metrics.jsonl with a single-process run of the same config: loss and gradient
norm per step, and the step's token count (which shows the data shards add up to the
global batch). DDP sums gradients in the same order as one process's micro-batches, so
its numbers are expected bit-equal; FSDP2's reduce-scatter sums shards in another order,
so it gets a 1e-6 relative tolerance. Rollouts are compared too (the distill test): each
micro-batch is sampled under a seed from the global row index, so the same responses come
out whatever rank draws them; with rollout.decode_batch each row has its own seed, and one
process decoding 3 rows per call equals two ranks decoding 2 each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import engine_overrides

KEYS = ("train/loss", "train/grad_norm", "rollout/tokens", "rollout/length_mean", "reward/mean", "reward/std",
        "rollout/accuracy", "rollout/student_fraction")


def _launch(mode: str, overrides: list[str], nproc: int, *extra: str) -> None:
    if nproc == 1:                  # in this process: the same `run` the CLI calls, without the start-up
        from opdkit.engine.config import load_config
        from opdkit.engine.runner import run
        run(load_config(mode, None, overrides), resume="--resume" in extra)
        return
    # --standalone: a free rendezvous port, so parallel test runs do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "opdkit.cli", mode, *extra, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # 40 s on an idle 2-core machine; a loaded one (load 10 seen) took over 180 s to finish the
    # final checkpoint and eval after the last step, which read as a hang. 600 s still catches one.
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _trajectory(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in KEYS if k in r} for r in rows if r["step"] > 0]


def _assert_same(got: list[dict], want: list[dict], rel: float) -> None:
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-9), (k, g, w)


@pytest.fixture(scope="module")
def single_sft(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    _launch("sft", engine_overrides(tiny_dir, out), 1)
    return _trajectory(out)


def test_ddp_two_processes_equal_one_process(tiny_dir, tmp_path, single_sft):
    out = tmp_path / "ddp"
    _launch("sft", engine_overrides(tiny_dir, out, **{"run.parallel": "ddp"}), 2)
    got = _trajectory(out)
    _assert_same(got, single_sft, rel=0.0)
    assert got[0]["train/loss"] != got[1]["train/loss"]          # the weights moved: a real trajectory
    # rank 0 alone wrote the run directory, and its checkpoint is an ordinary single-process one
    assert (out / "checkpoints" / "step_00000003" / "student.safetensors").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_fsdp_two_processes_equal_one_process_and_resume_at_world_size_one(tiny_dir, tmp_path, single_sft):
    out = tmp_path / "fsdp"
    _launch("sft", engine_overrides(tiny_dir, out, **{"run.parallel": "fsdp", "optim.steps": 2}), 2)
    # the gathered checkpoint of step 2 (written by 2 FSDP ranks) resumes in one process
    _launch("sft", engine_overrides(tiny_dir, out, **{"run.parallel": "fsdp"}), 1, "--resume")
    events = [json.loads(line)["event"] for line in (out / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events
    _assert_same(_trajectory(out), single_sft, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode,values", [("distill", {"model.teacher": "TEACHER"}),
                                         ("distill", {"model.teacher": "TEACHER", "rollout.decode_batch": 3}),
                                         ("distill", {"model.teacher": "TEACHER", "rollout.source": "mix",
                                                      "rollout.student_fraction": 0.5}),
                                         ("grpo", {"rollout.samples_per_prompt": 2, "rollout.temperature": 2.0})])
def test_sampled_rollouts_do_not_depend_on_world_size(tiny_dir, tmp_path, mode, values):
    values = {k: tiny_dir / "teacher" if v == "TEACHER" else v for k, v in values.items()}
    _launch(mode, engine_overrides(tiny_dir, tmp_path / "one", **values), 1)
    _launch(mode, engine_overrides(tiny_dir, tmp_path / "ddp", **values), 2)
    samples = lambda d: [json.loads(line)["texts"] for line in (d / "samples.jsonl").read_text().splitlines()]
    assert samples(tmp_path / "ddp") == samples(tmp_path / "one")
    _assert_same(_trajectory(tmp_path / "ddp"), _trajectory(tmp_path / "one"), rel=0.0)


def test_uneven_prompts_per_rank_is_refused():
    from opdkit.scale.distributed import Dist
    with pytest.raises(ValueError, match="multiple of the world size 2"):
        Dist(rank=0, world=2).shard([1, 2, 3])
    assert Dist(rank=1, world=2).shard([1, 2, 3, 4]) == ([3, 4], 2)


@pytest.mark.gpu
def test_one_process_on_a_gpu_machine_trains_on_the_gpu(tiny_dir, tmp_path):
    """Found in session 4: only the torchrun path placed the models, so `opdkit distill` on one GPU
    trained on the CPU. Run the real entry point in this process and look at where the weights live."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from opdkit.engine.config import load_config
    from opdkit.engine.session import build_session
    from opdkit.scale import distributed
    cfg = load_config("sft", None, engine_overrides(tiny_dir, tmp_path / "gpu", **{"optim.steps": 1}))
    s = build_session(cfg)
    distributed.setup(s, cfg.run.parallel)
    assert next(s.student.parameters()).is_cuda
