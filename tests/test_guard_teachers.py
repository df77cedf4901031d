"""The guard with several teachers: rules scoped to one teacher's metrics, and the drop_teacher action.

Decisions (which metric a scoped rule reads, what a drop leaves, which alarm wins) are pure and
tested on constructed values; the runner's part is tested on the tiny pair: the rule fires on the
right teacher, the run continues without it, and a resume after the drop is exact.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import engine_overrides

from opdkit import cli
from opdkit.engine.config import load_config
from opdkit.engine.guard import Alarm, Guard, Rule, describe_alarm, most_severe, plan_drop, teacher_metric
from opdkit.engine.runner import GuardStopped, run
from opdkit.models.multiteacher import MultiTeacher, kept_rows
from opdkit.objectives.scores import Head, TeacherScores
from opdkit.tasks.data import Example

# ----------------------------------------------------------------------------- decisions (no training)


def test_a_scoped_rule_reads_its_teachers_own_metric():
    assert teacher_metric("diag/overlap", "tutor") == "diag/teacher/tutor/overlap"
    assert teacher_metric("eval/teacher_kl", "tutor") == "eval/teacher_kl/tutor"
    assert teacher_metric("diag/teacher/tutor/loss", "tutor") == "diag/teacher/tutor/loss"     # already scoped
    assert teacher_metric("eval/teacher_kl/tutor", "tutor") == "eval/teacher_kl/tutor"
    assert teacher_metric("diag/loss", "loss") == "diag/teacher/loss/loss"      # a teacher named like a metric
    assert teacher_metric("diag/overlap", "") == "diag/overlap"                  # unscoped rules: unchanged


def test_a_rule_scoped_to_one_teacher_fires_on_that_teacher_only():
    rules = [Rule(f"{n}_drift", "diag/overlap", below=0.5, patience=2, action="drop_teacher", teacher=n)
             for n in ("tutor", "peer")]
    guard = Guard(rules)
    fired = []
    for step, (tutor, peer) in enumerate([(0.9, 0.9), (0.9, 0.3), (0.9, 0.2), (0.1, 0.2)], 1):
        metrics = {"diag/overlap": 0.0, "diag/teacher/tutor/overlap": tutor, "diag/teacher/peer/overlap": peer}
        fired += [(a.step, a.teacher, a.metric, a.action) for a in guard.observe(step, metrics)]
    # the global diag/overlap (0.0) is not what they read; tutor's low value at step 4 is one step, patience 2
    assert fired == [(3, "peer", "diag/teacher/peer/overlap", "drop_teacher")]
    guard.retire_teacher("peer")
    assert [r.name for r in guard.rules] == ["tutor_drift"]


def test_drop_teacher_rules_need_a_teacher():
    with pytest.raises(ValueError, match="drop_teacher needs `teacher`"):
        Rule("r", "diag/loss", above=1.0, action="drop_teacher")
    with pytest.raises(ValueError, match="goes with action rollback"):
        Rule("r", "diag/loss", above=1.0, action="warn", teacher="a", drop_teacher=True)
    with pytest.raises(ValueError, match="goes with action rollback"):
        Rule("r", "diag/loss", above=1.0, action="rollback", drop_teacher=True)
    assert Rule("r", "diag/loss", above=1.0, action="rollback", teacher="a", drop_teacher=True).watched == \
        "diag/teacher/a/loss"


def test_plan_drop_keeps_a_teacher_to_learn_from():
    weights = {"a": 0.5, "b": 0.5, "c": 0.0}
    assert plan_drop("a", (), weights).dropped == ("a",)
    assert plan_drop("a", ("a",), weights).dropped == ("a",)                     # twice: no change
    assert "leave no teacher" in plan_drop("b", ("a",), weights).stop_reason     # c weighs 0: nothing left
    assert plan_drop("c", ("a",), weights).dropped == ("a", "c")
    assert "not among the run's teachers (a, b, c)" in plan_drop("z", (), weights).stop_reason


def test_stop_then_rollback_then_drop_is_the_order_of_severity():
    def alarm(action):
        return Alarm(action, "m", 3, 1.0, None, action, 2, "", "a")
    drop, back, stop, warn = alarm("drop_teacher"), alarm("rollback"), alarm("stop"), alarm("warn")
    assert most_severe([warn, drop, back, stop]) is stop
    assert most_severe([warn, drop, back]) is back
    assert most_severe([warn, drop]) is drop
    assert describe_alarm(drop) == "guard: drop_teacher at step 3: m = 1; action: drop_teacher 'a'"


class _Fixed:
    """A member whose scores are a fixed lazy head (rows picked by each example's `pi` as an index)."""

    provides = "full"

    def __init__(self, head: Head):
        self.head = head

    def score(self, examples, responses):
        return TeacherScores(head=self.head.rows(torch.tensor([int(e.pi) for e in examples])))


def _examples(names):
    return [Example(prompt="p", pi=str(i), teacher=n) for i, n in enumerate(names)]


def test_dropping_a_mixture_member_renormalises_the_others_and_a_routed_member_masks_its_rows():
    g, v = torch.Generator().manual_seed(0), 7
    heads = {n: Head(torch.randn(3, 4, 5, generator=g), torch.randn(v, 5, generator=g), None, 1.0) for n in "abc"}
    mixture = MultiTeacher({n: _Fixed(h) for n, h in heads.items()}, "mixture", {"a": 0.2, "b": 0.3, "c": 0.5})
    examples, responses = _examples("aaa"), [[1] * 4] * 3
    mixture.drop(("c",))
    assert mixture.weights == pytest.approx({"a": 0.4, "b": 0.6, "c": 0.0})
    got = mixture.score(examples, responses).resolved().logprobs
    expected = F.log_softmax(0.4 * heads["a"].logprobs() + 0.6 * heads["b"].logprobs(), -1)
    torch.testing.assert_close(got, expected)                  # c takes no part: the geometric mean of a and b
    mixture.drop(())
    assert mixture.weights == pytest.approx({"a": 0.2, "b": 0.3, "c": 0.5})
    routed = MultiTeacher({n: _Fixed(h) for n, h in heads.items()}, "route")
    assert kept_rows(routed, _examples("abc")) is None
    routed.drop(("b",))
    assert kept_rows(routed, _examples("abcb")) == [True, False, True, False]
    assert routed.member_weights() == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert kept_rows(mixture, examples) is None                # a mixture has no rows of its own to mask


# ----------------------------------------------------------------------------- the runner (tiny pair)

def _routed(tiny_dir, tmp_path, out, rules, **extra):
    rows = [json.loads(line) for line in (tiny_dir / "train.jsonl").read_text().splitlines()]
    data = tmp_path / "routed.jsonl"
    data.write_text("".join(json.dumps({**r, "teacher": ("tutor", "peer")[i % 2]}) + "\n" for i, r in enumerate(rows)))
    values = {"model.teachers": json.dumps({"tutor": str(tiny_dir / "teacher"), "peer": str(tiny_dir / "student")}),
              "objective.name": "rkl", "objective.options": "{}", "data.train": data, "optim.steps": 4,
              "guard.use_defaults": False, "guard.rules": json.dumps(rules), **extra}
    return engine_overrides(tiny_dir, out, **values)


def _events(run_dir, kind):
    return [e for e in (json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == kind]


# share is logged for both teachers at every step (0 when a teacher has no rows), so a rule on it is deterministic
DROP_PEER = {"name": "peer_off", "teacher": "peer", "metric": "diag/share", "above": -1, "patience": 2,
             "action": "drop_teacher"}
NEVER_TUTOR = {"name": "tutor_off", "teacher": "tutor", "metric": "diag/share", "below": -1, "action": "drop_teacher"}


def test_a_drop_teacher_rule_fires_on_its_teacher_the_run_continues_and_resumes_exactly(tiny_dir, tmp_path):
    rules = [DROP_PEER, NEVER_TUTOR]
    full = run(load_config("distill", overrides=_routed(tiny_dir, tmp_path, tmp_path / "full", rules)))
    assert len(full) == 4                                                     # the run went on to the end
    drops = _events(tmp_path / "full", "drop_teacher")
    assert [(e["step"], e["teacher"], e["dropped"]) for e in drops] == [(2, "peer", ["peer"])]
    for row in full[2:]:                                                      # steps 3, 4: peer's rows carry no loss
        assert row["diag/teacher/peer/share"] == 0.0 and row["diag/teacher/tutor/share"] == pytest.approx(1.0)
        assert row["train/loss"] == pytest.approx(row["diag/teacher/tutor/loss"], rel=1e-5)
    assert full[0]["diag/teacher/peer/share"] > 0                             # before: both taught
    saved = torch.load(tmp_path / "full" / "checkpoints" / "step_00000004" / "state.pt", weights_only=False)
    assert saved["changes"] == {"dropped_teachers": ["peer"]}
    part = tmp_path / "part"
    run(load_config("distill", overrides=_routed(tiny_dir, tmp_path, part, rules, **{"optim.steps": 3})))
    resumed = run(load_config("distill", overrides=_routed(tiny_dir, tmp_path, part, rules)), resume=True)
    assert [r["step"] for r in resumed] == [4] and resumed[0]["diag/teacher/peer/share"] == 0.0
    assert resumed[0]["train/loss"] == pytest.approx(full[-1]["train/loss"], rel=1e-5, abs=1e-7)
    assert len(_events(part, "drop_teacher")) == 1                            # the resumed run did not drop again


def test_a_rollback_that_drops_a_teacher_goes_back_then_continues_without_it(tiny_dir, tmp_path):
    rule = {"name": "peer_kl", "teacher": "peer", "metric": "eval/teacher_kl", "above": -1, "action": "rollback",
            "drop_teacher": True}
    out = tmp_path / "r"
    extra = {"data.eval": tmp_path / "routed.jsonl", "run.eval_every": 2, "run.eval_limit": 4}     # _routed writes it
    rows = run(load_config("distill", overrides=_routed(tiny_dir, tmp_path, out, [rule], **extra)))
    rollbacks = _events(out, "rollback")
    assert [(e["from_step"], e["to_step"], e["changes"]) for e in rollbacks] == [(2, 1, {"dropped_teachers": ["peer"]})]
    assert [r["step"] for r in rows] == [1, 2, 2, 3, 4]                        # replayed from step 1 to the end
    assert rows[1]["diag/teacher/peer/share"] > 0 and all(r["diag/teacher/peer/share"] == 0.0 for r in rows[2:])


def test_a_mixture_drops_a_teacher_by_its_eval_kl_and_goes_on_with_the_other(tiny_dir, tmp_path):
    from opdkit.engine.session import build_session
    rule = {"name": "peer_kl", "teacher": "peer", "metric": "eval/teacher_kl", "above": -1, "action": "drop_teacher"}
    out = tmp_path / "r"
    cfg = load_config("distill", overrides=_routed(tiny_dir, tmp_path, out, [rule], **{
        "teacher.combine": "mixture", "teacher.weights": "{tutor: 1, peer: 3}", "data.eval": tmp_path / "routed.jsonl",
        "run.eval_every": 2, "run.eval_limit": 4, "optim.steps": 3}))
    session = build_session(cfg)
    assert session.teacher.weights == pytest.approx({"tutor": 0.25, "peer": 0.75})
    rows = run(cfg, session=session)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [(e["step"], e["teacher"]) for e in _events(out, "drop_teacher")] == [(2, "peer")]
    assert session.teacher.weights == pytest.approx({"tutor": 1.0, "peer": 0.0})


def test_dropping_the_last_teacher_stops_the_run(tiny_dir, tmp_path):
    rules = [DROP_PEER, dict(DROP_PEER, name="tutor_off", teacher="tutor", patience=3)]
    with pytest.raises(GuardStopped, match="would leave no teacher"):
        run(load_config("distill", overrides=_routed(tiny_dir, tmp_path, tmp_path / "r", rules)))
    assert [e["teacher"] for e in _events(tmp_path / "r", "drop_teacher")] == ["peer"]


@pytest.mark.parametrize("rule, extra, says", [
    ({"teacher": "nobody"}, {}, "teacher 'nobody' is not in model.teachers (tutor, peer)"),
    ({"metric": "train/loss"}, {}, "watches 'train/loss'"),
    ({"metric": "eval/teacher_kl"}, {}, "logged only by in-run evaluation (data.eval and run.eval_every)"),
    ({}, {"teacher.combine": "mixture"}, "teacher.combine=mixture does not log per teacher; its metrics: "
                                         "eval/teacher_kl/peer"),
    ({"teacher": ""}, {}, "action drop_teacher needs `teacher`"),
])
def test_a_bad_teacher_rule_is_one_error_line_from_the_cli(tiny_dir, tmp_path, capsys, rule, extra, says):
    code = cli.main(["distill", *_routed(tiny_dir, tmp_path, tmp_path / "r", [dict(DROP_PEER, **rule)], **extra)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("opdkit: error: guard"), err
    assert says in err[0]
    assert not (tmp_path / "r").exists()


def test_a_teacher_rule_with_one_teacher_is_refused(tiny_dir, tmp_path, capsys):
    rules = json.dumps([DROP_PEER])
    code = cli.main(["distill", *engine_overrides(tiny_dir, tmp_path / "r", **{
        "model.teacher": tiny_dir / "teacher", "guard.rules": rules})])
    assert code == 2 and "needs several teachers (model.teachers)" in capsys.readouterr().err
