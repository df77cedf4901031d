"""engine/runner: settings read once, a finished run left alone, warnings that do not act."""
from __future__ import annotations

import json

from conftest import engine_overrides
from tqdm import tqdm

from opdkit.engine.config import load_config
from opdkit.engine.guard import Alarm
from opdkit.engine.runner import LoopSettings, Runner, run
from opdkit.engine.session import build_session


def test_loop_settings_evaluate_only_when_there_is_held_out_data():
    base = ["model.student=s", "model.teacher=t", "data.train=d.jsonl", "run.eval_every=5", "guard.max_rollbacks=4"]
    assert LoopSettings.from_config(load_config("distill", overrides=base)).eval_every == 0
    settings = LoopSettings.from_config(load_config("distill", overrides=base + ["data.eval=e.jsonl"]))
    assert (settings.eval_every, settings.max_rollbacks, settings.mode) == (5, 4, "distill")


def test_resuming_a_finished_run_does_nothing_and_says_so(tiny_dir, tmp_path, capsys):
    cfg = load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r", **{"optim.steps": 2}))
    assert len(run(cfg)) == 2
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    assert run(cfg, resume=True) == []
    assert "already finished: its newest checkpoint is step 2" in capsys.readouterr().err
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_warnings_are_logged_and_do_not_act(tiny_dir, tmp_path):
    cfg = load_config("sft", overrides=engine_overrides(tiny_dir, tmp_path / "r"))
    (tmp_path / "r").mkdir()
    runner = Runner(build_session(cfg), tmp_path / "r")
    runner.bar = tqdm(disable=True)
    alarms = [Alarm("hedging", "diag/hedge_rate", 3, 40.0, 10.0, "warn", 1, "hedge words rising")]
    assert runner.act(alarms) is False and runner.step == 0
    events = [json.loads(line) for line in (tmp_path / "r" / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["rule"], e["onset"]) for e in events] == [("alarm", "hedging", 1)]
