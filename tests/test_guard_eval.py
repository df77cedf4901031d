"""Guard rules on eval/ metrics: the step-0 baseline, sparse onsets, the default `eval_repeat` rule on
recorded real-model runs, and its rollback, resume and config check in real tiny runs."""
from __future__ import annotations

import json

import pytest
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.guard import Guard, Rule, replay
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import GuardStopped, run

# Greedy held-out 3-gram repeat ratio by evaluation step, as logged by real-model runs (RESULTS.md,
# "Guard: eval repetition rule (session 6)"): the pruned SmolLM2 healing arms (examples/heal64_smollm2.yaml,
# session 5's runs/heal64c) and the Gemma-3-270M -> SmolLM2 cross-tokenizer arms (issue 16, session 5).
LOOPING = {      # run: (trajectory, the step the rule must fire at)
    "gemma_chunk_rkl": ({0: 0.045, 6: 0.611, 12: 0.615}, 6),
    "gemma_shared_topk": ({0: 0.045, 6: 0.700, 12: 0.658}, 6),
    "heal64c_topk_rkl_unnorm": ({0: 0.416, 8: 0.749, 16: 0.804, 24: 0.721}, 8),
}
HEALTHY = {
    "heal64c_rkl48": {0: 0.416, 8: 0.249, 16: 0.294, 24: 0.261, 32: 0.124, 40: 0.157, 48: 0.153},
    "heal64c_topk_rkl_renorm": {0: 0.416, 8: 0.349, 16: 0.266, 24: 0.203},
    "heal64c_topk_rkl_sg": {0: 0.416, 8: 0.512, 16: 0.266, 24: 0.333},
    "heal64c_topk_rkl_tail": {0: 0.416, 8: 0.389, 16: 0.291, 24: 0.263},
    "heal64c_unnorm_guarded": {0: 0.416, 8: 0.571, 16: 0.408, 24: 0.380},      # recovered after its rollback
    "gemma_chunk_rkl_lr1e-5": {0: 0.045, 6: 0.118, 12: 0.297},
}


def _rows(trajectory: dict, every: int | None = None) -> list[dict]:
    """metrics rows: the eval value at its step, and (with `every`) diag-only rows on the steps between."""
    last = max(trajectory)
    steps = range(0, last + 1) if every else sorted(trajectory)
    return [{"step": s, **({"eval/repeat_ratio": trajectory[s]} if s in trajectory else {"diag/p_k": 0.5})}
            for s in steps]


@pytest.mark.parametrize("name", sorted(LOOPING))
def test_default_eval_repeat_fires_on_the_recorded_loops(name):
    trajectory, step = LOOPING[name]
    alarms = replay(Guard.from_config(), _rows(trajectory, every=1))
    assert [(a.rule, a.step, a.onset, a.action) for a in alarms] == [("eval_repeat", step, step, "rollback")]
    assert alarms[0].baseline == trajectory[0]                    # the step-0 evaluation, not a mean of later ones


@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_default_eval_repeat_is_quiet_on_the_recorded_healthy_runs(name):
    assert replay(Guard.from_config(), _rows(HEALTHY[name], every=1)) == []


def test_both_bounds_hold_a_repetitive_start_to_getting_half_as_repetitive_again():
    rule = Guard.from_config().rule("eval_repeat")
    start = 0.45                                                  # above 0.5 alone would fire at 0.55
    assert replay(Guard([rule]), _rows({0: start, 4: 0.6, 8: 0.67})) == []
    assert [a.step for a in replay(Guard([rule]), _rows({0: start, 4: 0.6, 8: 0.68}))] == [8]


def test_an_eval_rules_window_and_onset_count_evaluations_not_steps():
    rule = Rule("r", "eval/x", above=1.0, window=2, patience=2)
    # evaluations every 3 steps: smoothed 0.5 (3), 1.5 (6), 2.0 (9) -> holds at 6 and 9, fires at 9;
    # the window at step 6 began with the evaluation at step 3
    rows = [{"step": s, **({"eval/x": {3: 0, 6: 3, 9: 1}[s]} if s % 3 == 0 else {})} for s in range(1, 10)]
    alarms = replay(Guard([rule]), rows)
    assert [(a.step, a.onset) for a in alarms] == [(9, 3)]


def test_observe_before_sets_missing_baselines_only():
    guard = Guard([Rule("r", "eval/x", above_rel=2.0), Rule("d", "diag/y", above_rel=2.0)], baseline_steps=3)
    guard.observe_before({"eval/x": 0.2, "eval/z": 9.0})
    guard.observe_before({"eval/x": 5.0})                        # a resume's fill-in does not overwrite
    assert guard.baselines == {"eval/x": 0.2}
    assert [a.rule for a in guard.observe(1, {"eval/x": 0.5, "diag/y": 1.0})] == ["r"]   # no wait for 3 evals


def test_a_state_saved_before_tracks_kept_steps_still_loads_and_fires():
    rule = Rule("r", "m", above=1.0, window=2)
    guard = Guard([rule])
    for step in (1, 2):
        guard.observe(step, {"m": 0.0})
    state = guard.state_dict()
    for track in state["tracks"].values():
        del track["steps"]
    resumed = Guard([rule])
    resumed.load_state_dict(state)
    assert [(a.step, a.onset) for a in resumed.observe(3, {"m": 4.0})] == [(3, 2)]     # (0 + 4) / 2 > 1 since 2


def test_a_teacher_scoped_relative_rule_uses_its_teachers_baseline():
    rule = Rule("peer_up", "diag/kl", above_rel=2.0, teacher="peer")
    guard = Guard([rule], baseline_steps=1)
    guard.observe(1, {"diag/teacher/peer/kl": 1.0, "diag/kl": 100.0})
    assert [a.baseline for a in guard.observe(2, {"diag/teacher/peer/kl": 3.0, "diag/kl": 100.0})] == [1.0]


# ----------------------------------------------------------------------------- real tiny runs

def _looping_data(tiny_dir):
    """SFT targets that loop: the tiny student learns to repeat one word (greedy ratio 0 -> 9/12)."""
    path = tiny_dir / "loop.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"what is {i} plus 2?", "response": " ".join(["the"] * 12)}) + "\n"
                            for i in range(12)))
    return path


def _loop_overrides(tiny_dir, out, **extra):
    data = _looping_data(tiny_dir)
    return engine_overrides(tiny_dir, out, **{"data.train": data, "data.eval": data, "run.eval_every": 2,
                                              "run.eval_limit": 4, "rollout.max_new_tokens": 12,
                                              "optim.micro_batch": 4, "optim.steps": 8, **extra})


def _eval_trail(rows):
    return {r["step"]: r["eval/repeat_ratio"] for r in rows if "eval/repeat_ratio" in r}


def _events(run_dir, kind):
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_the_default_eval_repeat_rule_rolls_back_a_run_that_learns_to_loop(tiny_dir, tmp_path):
    run(load_config("sft", overrides=_loop_overrides(tiny_dir, tmp_path / "free", **{"guard.enabled": False})))
    free = _eval_trail(read_metrics(tmp_path / "free" / "metrics.jsonl"))
    bound = max(0.5, 1.5 * free[0])
    looped = [s for s in sorted(free) if s > 0 and free[s] > bound]
    assert looped, f"the unguarded run never looped: {free}"               # else the test proves nothing
    out = tmp_path / "guarded"
    try:
        run(load_config("sft", overrides=_loop_overrides(tiny_dir, out, **{"guard.max_rollbacks": 1})))
    except GuardStopped as stopped:
        assert "eval_repeat" in str(stopped)
    alarm = _events(out, "alarm")[0]
    assert (alarm["rule"], alarm["onset"], alarm["baseline"]) == ("eval_repeat", looped[0], free[0])
    rollback = _events(out, "rollback")[0]
    assert (rollback["from_step"], rollback["to_step"]) == (looped[0], looped[0] - 1)   # save_every 1
    assert rollback["changes"]["lr_scale"] == 0.5
    assert looped[0] in {r["step"] for r in read_metrics(out / "abandoned.jsonl")}


def test_an_eval_rule_with_action_stop_stops_at_the_looping_evaluation_with_a_checkpoint(tiny_dir, tmp_path):
    rule = json.dumps([{"name": "eval_repeat", "metric": "eval/repeat_ratio", "above": 0.5, "above_rel": 1.5,
                        "action": "stop"}])
    out = tmp_path / "r"
    with pytest.raises(GuardStopped, match="eval_repeat at step"):
        run(load_config("sft", overrides=_loop_overrides(tiny_dir, out, **{"guard.rules": rule})))
    stop = _events(out, "guard_stop")[0]["step"]
    trail = _eval_trail(read_metrics(out / "metrics.jsonl"))
    assert trail[stop] > max(0.5, 1.5 * trail[0]) and all(trail[s] <= max(0.5, 1.5 * trail[0]) for s in trail if s < stop)
    assert (out / "checkpoints" / f"step_{stop:08d}").is_dir()


def test_an_eval_rule_resumes_exactly(tiny_dir, tmp_path):
    warn = json.dumps([{"name": "eval_repeat", "metric": "eval/repeat_ratio", "above": 0.5, "above_rel": 1.5}])
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(load_config("sft", overrides=_loop_overrides(tiny_dir, whole, **{"guard.rules": warn})))
    run(load_config("sft", overrides=_loop_overrides(tiny_dir, part, **{"guard.rules": warn, "optim.steps": 3})))
    run(load_config("sft", overrides=_loop_overrides(tiny_dir, part, **{"guard.rules": warn})), resume=True)
    alarms = [[(e["rule"], e["step"], e["onset"], e["baseline"]) for e in _events(d, "alarm")] for d in (whole, part)]
    assert alarms[0] and alarms[0] == alarms[1]
    assert all(a[1] > 3 for a in alarms[0]), alarms                         # fired in the resumed part
    assert _eval_trail(read_metrics(part / "metrics.jsonl")) == pytest.approx(_eval_trail(read_metrics(whole / "metrics.jsonl")))


def test_an_eval_rule_without_evaluation_is_one_error_line_from_the_cli(tiny_dir, tmp_path, capsys):
    from opdkit import cli
    rule = json.dumps([{"name": "loops", "metric": "eval/repeat_ratio", "above": 0.5, "action": "stop"}])
    code = cli.main(["sft", *engine_overrides(tiny_dir, tmp_path / "r"), f"guard.rules={rule}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("opdkit: error: guard rule 'loops' watches 'eval/repeat_ratio', logged only by in-run "
                             "evaluation: set data.eval and run.eval_every")
    assert not (tmp_path / "r").exists()
    # the default eval_repeat rule stays idle without evaluation: a plain run loads
    assert load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "ok")).guard.enabled
