"""Several teachers (model.teachers): the block head, routing, the geometric mixture, refusals, resume."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session
from opdkit.engine.train import StepSettings, collect
from opdkit.models.multiteacher import block_head
from opdkit.objectives.scores import Head


def _head(n, r, h, v, temperature, bias, g):
    return Head(torch.randn(n, r, h, generator=g), torch.randn(v, h, generator=g),
                torch.randn(v, generator=g) if bias else None, temperature)


def test_block_head_routes_rows_exactly_and_mixes_as_a_renormalised_geometric_mean():
    g, v = torch.Generator().manual_seed(0), 11
    a, b = _head(2, 3, 4, v, 0.7, True, g), _head(3, 5, 6, v, 1.3, False, g)
    routed = block_head({"a": a, "b": b}, {"a": ([0, 3], 1.0), "b": ([1, 2, 4], 1.0)}, n=5, width=5)
    got = routed.logprobs()
    torch.testing.assert_close(got[[0, 3], :3], a.logprobs())
    torch.testing.assert_close(got[[1, 2, 4]], b.logprobs())
    a, b = _head(2, 4, 4, v, 0.7, True, g), _head(2, 4, 6, v, 1.3, True, g)
    mixed = block_head({"a": a, "b": b}, {"a": ([0, 1], 0.25), "b": ([0, 1], 0.75)}, n=2, width=4).logprobs()
    geometric = 0.25 * a.logprobs() + 0.75 * b.logprobs()
    torch.testing.assert_close(mixed, F.log_softmax(geometric, -1))     # prod q_i^w_i / Z


def _routed_data(tiny_dir, path, names=("tutor", "peer")):
    rows = [json.loads(line) for line in (tiny_dir / "train.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "teacher": names[i % len(names)]}) + "\n" for i, r in enumerate(rows)))
    return path


def _teachers(tiny_dir, **extra):
    return {"model.teachers": json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": str(tiny_dir / "student")}),
            "objective.name": "rkl", "objective.options": "{}", **extra}


def test_routed_teachers_score_and_write_like_each_teacher_alone(tiny_dir, tmp_path):
    data = _routed_data(tiny_dir, tmp_path / "routed.jsonl")
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **_teachers(
        tiny_dir, **{"data.train": data, "rollout.source": "teacher"})))
    s, c, state = build_session(cfg), StepSettings.from_config(cfg), initial_state(cfg)
    rollouts = collect(s, c, s.items[:4], state.max_new_tokens, salt=5, first=0)
    examples = [it.example for it in s.items[:4]]
    got = s.teacher.score(examples, rollouts.response_ids).resolved().logprobs
    for i, e in enumerate(examples):
        member = s.teacher.members[e.teacher]
        alone = member.score([e], [rollouts.response_ids[i]]).resolved().logprobs[0]
        n = len(rollouts.response_ids[i])
        torch.testing.assert_close(got[i, :n], alone[:n], rtol=1e-5, atol=1e-5)
        # the row was written by its own teacher: the recorded behaviour log-probs are that teacher's
        written = alone[:n].gather(-1, torch.tensor(rollouts.response_ids[i])[:, None]).squeeze(-1)
        torch.testing.assert_close(rollouts.sampler_logprobs[i], written, rtol=1e-4, atol=1e-4)


def test_routed_run_logs_per_teacher_metrics_and_resumes_with_an_ema_self_teacher(tiny_dir, tmp_path):
    data = _routed_data(tiny_dir, tmp_path / "routed.jsonl", names=("tutor", "me"))
    extra = {**_teachers(tiny_dir), "model.teachers": json.dumps({"tutor": str(tiny_dir / "teacher"), "me": "self"}),
             "teacher.self_weights": "ema", "data.train": data, "data.eval": data, "run.eval_every": 3,
             "run.eval_limit": 4, "guard.enabled": False}
    full = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "full", **extra)))
    row = full[-1]
    assert row["diag/teacher/tutor/share"] + row["diag/teacher/me/share"] == pytest.approx(1.0)
    assert row["diag/teacher/tutor/loss"] > 0 and "diag/teacher/me/overlap" in row
    assert 0.0 <= row["diag/teacher/tutor/negative_reward"] <= 1.0          # the reward sign, per teacher
    parts = sum(row[f"diag/teacher/{n}/share"] * row[f"diag/teacher/{n}/loss"] for n in ("tutor", "me"))
    assert parts == pytest.approx(row["train/loss"], rel=1e-4)               # each teacher's token mean, re-weighted
    assert "eval/teacher_kl/tutor" in row and "eval/teacher_kl/me" in row
    checkpoint = sorted((tmp_path / "full" / "checkpoints").glob("step_*"))[-1]
    assert (checkpoint / "teacher_ema-me.safetensors").is_file()
    run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "part", **{**extra, "optim.steps": 2})))
    resumed = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "part", **extra)), resume=True)
    assert resumed[-1]["train/loss"] == pytest.approx(row["train/loss"], rel=1e-5, abs=1e-7)
    assert resumed[-1]["eval/teacher_kl/me"] == pytest.approx(row["eval/teacher_kl/me"], rel=1e-4, abs=1e-6)


def _opdkit(*args):
    return subprocess.run([sys.executable, "-m", "opdkit.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("extra, says", [
    ({"teacher.combine": "mixture", "teacher.weights": "{tutor: 0, peer: 0}"}, "must sum to a positive number"),
    ({"teacher.combine": "mixture", "teacher.weights": "{tutor: 1, nobody: 1}"}, "not in model.teachers"),
    ({"model.teachers": '{"tutor": "http://localhost:8000/v1", "peer": "x"}', "teacher.combine": "mixture"},
     "served"),
    ({"teacher.combine": "mixture", "rollout.source": "mix"}, "product of teachers"),
    ({"data.train": "UNROUTED"}, "names teacher 'stranger', which is not in model.teachers (tutor, peer)"),
])
def test_bad_several_teacher_input_is_one_line_through_the_cli(tiny_dir, tmp_path, extra, says):
    if extra.get("data.train") == "UNROUTED":
        extra = {"data.train": _routed_data(tiny_dir, tmp_path / "bad.jsonl", names=("tutor", "stranger"))}
    out = _opdkit("distill", *engine_overrides(tiny_dir, tmp_path / "r", **_teachers(tiny_dir, **extra)))
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("opdkit: error:") and says in lines[0]


@pytest.mark.slow
def test_two_routed_experts_teach_both_halves_better_than_either_alone(testbed, tmp_path):
    """Experts on even / odd answers (each 1.0 on its half, 0.0 on the other), routed by the data's
    teacher field: the student ends better on both halves than a student taught by either alone."""
    from opdkit.engine.export import export_run
    from opdkit.lab.experts import HALVES, build_experts, greedy_accuracy
    experts = build_experts(testbed)

    def distill(name: str, teacher: str, data: str) -> dict[str, float]:
        out = tmp_path / name
        run(load_config("distill", overrides=[
            f"model.student={testbed / 'student_60'}", teacher, f"data.train={testbed / data}", f"run.out={out}",
            "optim.steps=60", "optim.prompts_per_step=32",
            "optim.micro_batch=32", "optim.lr=3e-4", "rollout.max_new_tokens=4", "rollout.source=teacher",
            "objective.name=fkl", "run.save_every=60", "run.progress=false", "run.threads=1", "guard.enabled=false"]))
        export_run(out, tmp_path / f"{name}-model")
        return {h: greedy_accuracy(tmp_path / f"{name}-model", testbed / f"half_{h}.jsonl") for h in HALVES}

    routed = distill("routed", f"model.teachers={json.dumps({h: str(p) for h, p in experts.items()})}", "routed.jsonl")
    alone = {h: distill(f"only-{h}", f"model.teacher={experts[h]}", "task.jsonl") for h in HALVES}
    start = {h: greedy_accuracy(testbed / "student_60", testbed / f"half_{h}.jsonl") for h in HALVES}
    print({"start": start, "routed": routed, "alone": alone})
    for h in HALVES:
        other = next(x for x in HALVES if x != h)
        assert routed[h] > start[h]
        assert routed[h] > alone[other][h] + 0.2        # the expert of the other half teaches this half wrongly
    assert min(routed.values()) > max(min(a.values()) for a in alone.values()) + 0.2
