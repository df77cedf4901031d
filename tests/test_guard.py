"""The guard: rule semantics on constructed metric streams, and its actions in a real tiny run."""
from __future__ import annotations

import json

import pytest
from conftest import engine_overrides

from opdkit.engine.config import load_config
from opdkit.engine.guard import DEFAULT_RULES, Guard, Rule
from opdkit.engine.metrics import read_metrics
from opdkit.engine.runner import GuardStopped, run


def _feed(guard, values, metric="m"):
    fired = []
    for step, v in enumerate(values, 1):
        fired += [(a.step, a.onset) for a in guard.observe(step, {metric: v})]
    return fired


def test_absolute_rule_with_window_and_patience_fires_once_then_rearms():
    guard = Guard([Rule("r", "m", above=1.0, window=2, patience=2)])
    # smoothed: 0 .5 1.5 2.5 3 1.5 0 2.5 5 5: holds at 3-6 -> fires at 4 (onset 2, the window's first
    # step); clears at 7; holds again at 8-10 -> fires at 9 (onset 7)
    assert _feed(guard, [0, 1, 2, 3, 3, 0, 0, 5, 5, 5]) == [(4, 2), (9, 7)]


def test_relative_rule_waits_for_the_baseline():
    guard = Guard([Rule("drop", "m", below_rel=0.5)], baseline_steps=3)
    # baseline = mean(1, 1, 1) = 1 from step 3; 0.4 < 0.5 at step 4
    assert _feed(guard, [0.1, 1, 1.9, 0.4]) == [(4, 4)]
    assert guard.baselines["m"] == pytest.approx(1.0)


def test_all_bounds_must_hold():
    guard = Guard([Rule("r", "m", above=10, above_rel=3.0)], baseline_steps=2)
    assert _feed(guard, [2, 2, 8, 12]) == [(4, 4)]       # 8 > 3*2 but not > 10


def test_state_dict_resumes_the_same_alarms():
    values = [1, 1, 1, 0.9, 0.6, 0.5, 0.4, 0.3]
    rules = [Rule("drop", "m", below_rel=0.7, window=2, patience=2)]
    whole = _feed(Guard(rules, 3), values)
    first = Guard(rules, 3)
    _feed(first, values[:5])
    second = Guard(rules, 3)
    second.load_state_dict(first.state_dict())
    rest = []
    for step, v in enumerate(values[5:], 6):
        rest += [(a.step, a.onset) for a in second.observe(step, {"m": v})]
    assert whole == rest and whole


def test_config_rules_replace_and_disable_defaults():
    names = [r.name for r in DEFAULT_RULES]
    guard = Guard.from_config([{"name": "hedging", "metric": "diag/hedge_rate", "above": 1.0, "action": "stop"}],
                              disable=["overlap_fall"])
    assert [r.name for r in guard.rules] == [n for n in names if n != "overlap_fall"]
    assert guard.rule("hedging").action == "stop"
    with pytest.raises(ValueError, match="unknown rules"):
        Guard.from_config(disable=["nope"])
    with pytest.raises(ValueError, match="action must be one of"):
        Guard.from_config([{"name": "x", "metric": "m", "above": 1, "action": "panic"}])
    with pytest.raises(ValueError, match="needs at least one of"):
        Guard.from_config([{"name": "x", "metric": "m"}])


def _events(run_dir):
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


# train/epoch rises by 1/3 per step (4 of 12 prompts): the condition holds from step 2 on.
_EPOCH_RULE = {"name": "late", "metric": "train/epoch", "above": 0.5, "patience": 2}


def test_rollback_reloads_a_healthy_checkpoint_applies_changes_then_stops(tiny_dir, tmp_path):
    rule = dict(_EPOCH_RULE, action="rollback", lr_factor=0.5, switch_objective="topk_rkl_sg")
    cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teacher": tiny_dir / "teacher", "objective.name": "topk_rkl_unnorm", "optim.steps": 6,
        "guard.use_defaults": False, "guard.rules": json.dumps([rule]), "guard.max_rollbacks": 2}))
    with pytest.raises(GuardStopped, match="2 rollbacks already"):
        run(cfg)
    events = _events(tmp_path / "r")
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [(e["from_step"], e["to_step"]) for e in rollbacks] == [(3, 1), (3, 1)]
    assert rollbacks[-1]["changes"] == {"lr_scale": 0.25, "objective": "topk_rkl_sg"}
    assert [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")] == [1, 2, 3]
    assert len(read_metrics(tmp_path / "r" / "abandoned.jsonl")) == 4            # steps 2, 3 twice
    lrs = [r["train/lr"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl")]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(2.5e-4)


def test_stop_action_saves_and_raises(tiny_dir, tmp_path):
    cfg = load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "optim.steps": 6, "run.save_every": 10, "guard.use_defaults": False,
        "guard.rules": json.dumps([dict(_EPOCH_RULE, action="stop")])}))
    with pytest.raises(GuardStopped, match="late at step 3"):
        run(cfg)
    assert (tmp_path / "r" / "checkpoints" / "step_00000003").is_dir()
    assert any(e["event"] == "guard_stop" for e in _events(tmp_path / "r"))


def test_warn_action_logs_and_continues(tiny_dir, tmp_path):
    cfg = load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
        "optim.steps": 4, "guard.use_defaults": False, "guard.rules": json.dumps([dict(_EPOCH_RULE, action="warn")])}))
    assert len(run(cfg)) == 4
    alarms = [e for e in _events(tmp_path / "r") if e["event"] == "alarm"]
    assert [(a["rule"], a["step"], a["onset"]) for a in alarms] == [("late", 3, 2)]


def test_mass_drain_rule_is_retired_once_its_remedy_objective_is_in_use(tiny_dir, tmp_path):
    """Under topk_rkl_tail, P_K moves to the teacher's Q_K by design: the drain rule must not fire."""
    from opdkit.engine.runner import Runner
    from opdkit.engine.session import build_session
    names = {}
    for objective in ("topk_rkl_unnorm", "topk_rkl_tail"):
        cfg = load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / objective, **{
            "model.teacher": tiny_dir / "teacher", "objective.name": objective}))
        (tmp_path / objective).mkdir()
        runner = Runner(build_session(cfg), tmp_path / objective)
        names[objective] = {r.name for r in runner.guard.rules}
        if objective == "topk_rkl_unnorm":
            runner.guard.retire_fixed_by("topk_rkl_tail")          # what a rollback's switch does
            assert "topk_mass_drain" not in {r.name for r in runner.guard.rules}
    assert "topk_mass_drain" in names["topk_rkl_unnorm"]
    assert "topk_mass_drain" not in names["topk_rkl_tail"]
    assert "repeat_loops" in names["topk_rkl_tail"]                  # other rules stay


# ----------------------------------------------------------------------------- decisions (no training)

def _alarm(name: str, action: str, onset: int = 3):
    from opdkit.engine.guard import Alarm
    return Alarm(name, "m", 5, 1.0, None, action, onset, "")


def test_most_severe_prefers_stop_then_rollback_and_ignores_warnings():
    from opdkit.engine.guard import most_severe
    warn, back, stop = _alarm("w", "warn"), _alarm("b", "rollback"), _alarm("s", "stop")
    assert most_severe([warn, back, stop]) is stop
    assert most_severe([warn, back]) is back
    assert most_severe([warn]) is None and most_severe([]) is None


def test_rollback_plan_targets_the_newest_checkpoint_before_the_onset_and_compounds_the_lr():
    from opdkit.engine.guard import plan_rollback
    rule = Rule("drain", "m", below=1.0, action="rollback", lr_factor=0.5, switch_objective="topk_rkl_tail")
    plan = plan_rollback(rule, onset=7, checkpoint_steps=[8, 2, 6, 4], rollbacks=1, max_rollbacks=2,
                         lr_scale=0.5, objective="topk_rkl_unnorm")
    assert (plan.stop_reason, plan.to_step, plan.lr_scale, plan.objective) == ("", 6, 0.25, "topk_rkl_tail")
    same = plan_rollback(rule, 7, [6], 0, 2, 1.0, objective="topk_rkl_tail")
    assert same.objective == "" and same.lr_scale == 0.5             # already the remedy: no switch


def test_rollback_plan_stops_when_out_of_retries_or_checkpoints():
    from opdkit.engine.guard import plan_rollback
    rule = Rule("r", "m", above=1.0, action="rollback")
    assert "2 rollbacks already" in plan_rollback(rule, 7, [6], 2, 2, 1.0, "rkl").stop_reason
    assert "no checkpoint from before step 3" in plan_rollback(rule, 3, [3, 4], 0, 2, 1.0, "rkl").stop_reason


def test_retire_fixed_by_drops_only_rules_whose_remedy_is_in_use():
    guard = Guard.from_config()
    guard.retire_fixed_by("rkl")
    assert [r.name for r in guard.rules] == [r.name for r in DEFAULT_RULES]
    guard.retire_fixed_by("topk_rkl_tail")
    assert "topk_mass_drain" not in {r.name for r in guard.rules} and len(guard.rules) == len(DEFAULT_RULES) - 1


def test_a_rules_switch_objective_is_checked_when_the_config_loads(tiny_dir, tmp_path):
    from opdkit.errors import ConfigError

    def load(rule: dict, **extra):
        return load_config("distill", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{
            "model.teacher": tiny_dir / "teacher", "guard.rules": json.dumps([dict(_EPOCH_RULE, **rule)]), **extra}))
    with pytest.raises(ConfigError, match="switch_objective 'topk_rkl_tial' is not an objective.*'topk_rkl_tail'"):
        load({"action": "rollback", "switch_objective": "topk_rkl_tial"})
    with pytest.raises(ConfigError, match="same teacher"):
        load({"action": "rollback", "switch_objective": "sft"})
    with pytest.raises(ConfigError, match="served teacher returns only its top-k"):
        load({"action": "rollback", "switch_objective": "rkl"}, **{
            "teacher.url": "http://x/v1", "objective.name": "sampled_rkl"})
    with pytest.raises(ConfigError, match="guard: guard rule 'late': action must be one of"):
        load({"action": "explode"})
    assert load({"action": "rollback", "switch_objective": "topk_rkl_sg"}).guard.rules     # a valid rule loads


def test_a_bad_rule_is_one_error_line_from_the_cli(tiny_dir, tmp_path, capsys):
    from opdkit import cli
    rule = json.dumps([dict(_EPOCH_RULE, action="rollback", switch_objective="nope")])
    code = cli.main(["distill", *engine_overrides(tiny_dir, tmp_path / "r", **{"model.teacher": tiny_dir / "teacher"}),
                     f"guard.rules={rule}"])
    assert code == 2 and "opdkit: error: guard rule 'late': switch_objective 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()                       # refused before anything was written
