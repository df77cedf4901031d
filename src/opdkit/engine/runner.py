"""The run around the step: start, resume, the loop, the guard's actions.

`run(cfg, resume)` builds the session, restores the newest complete checkpoint when asked
(`opdkit.engine.run_checkpoint`), runs the identity self-test and the "before" evaluation on a
fresh run, then loops: step -> metrics -> stage control -> guard -> checkpoint. The config
is read once, into `LoopSettings` here and `StepSettings` for the step; what changes during
the run is the `RunState`. The guard decides (`opdkit.engine.guard`: which alarm, where a rollback
goes, what it changes); the runner carries it out: a rollback reloads the chosen checkpoint,
moves the abandoned metrics rows to `abandoned.jsonl`, applies the rule's changes
(learning-rate factor, objective switch, dropped teacher), reseeds sampling, and goes on. With
several teachers a `drop_teacher` alarm stops using one teacher in place; the dropped teachers
are part of the RunState, so a resume and a later rollback keep them dropped.

A recipe stage's control (`opdkit.recipes.schedules.StageControl`) is asked after every step with
(step, metrics, state) and may end the stage; see `StageControl` for the three calls.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from opdkit.engine import rundir
from opdkit.engine.config import Config, save_config
from opdkit.engine.divergence import WeightWatch
from opdkit.engine.evaluate import evaluate_session, gap_recovery, identity_self_test
from opdkit.engine.guard import Alarm, Guard, describe_alarm, most_severe, plan_drop, plan_rollback
from opdkit.engine.metrics import MetricLog, read_metrics, warn
from opdkit.engine.optim import make_optimizer, set_peak_lr
from opdkit.engine.run_checkpoint import Trainables, check_resume_config, load_weights_and_position, resumed_changes, save_run
from opdkit.engine.runstate import bind_objective, initial_state
from opdkit.engine.session import Session, build_session, new_stream
from opdkit.engine.train import StepSettings, train_step
from opdkit.errors import Interrupted, TrainingError
from opdkit.models import checkpoint
from opdkit.objectives import teacher_mismatch
from opdkit.scale import distributed
from opdkit.scale.profile import PhaseTimer, breakdown, format_breakdown


class GuardStopped(TrainingError):
    """The guard stopped the run; the message is the alarm."""


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads from the config, as values (`from_config`, once per run)."""

    mode: str
    steps: int
    save_every: int
    keep_checkpoints: int
    eval_every: int               # 0: no in-run evaluation (also when data.eval is empty)
    sample_every: int
    max_bad_steps: int
    max_rollbacks: int
    seed: int
    progress: bool
    profile: bool
    objective_options: dict
    max_weight_growth: float

    @classmethod
    def from_config(cls, cfg: Config) -> "LoopSettings":
        r = cfg.run
        return cls(cfg.mode, cfg.optim.steps, r.save_every, r.keep_checkpoints, r.eval_every if cfg.data.eval else 0,
                   r.sample_every, r.max_bad_steps, cfg.guard.max_rollbacks, r.seed, r.progress, r.profile,
                   dict(cfg.objective.options), r.max_weight_growth)


class Runner:
    def __init__(self, s: Session, run_dir: Path, control=None):
        cfg = s.cfg
        self.s, self.run_dir, self.control = s, run_dir, control
        self.loop_settings, self.settings = LoopSettings.from_config(cfg), StepSettings.from_config(cfg)
        self.log = MetricLog(run_dir, cfg.run.trackers) if s.dist.main else distributed.NullLog(run_dir)
        optimizer, scheduler = make_optimizer(s.student, self.settings.optim)
        g = cfg.guard
        guard = Guard.from_config(g.rules, g.baseline_steps, g.use_defaults, g.disable) if g.enabled else None
        self.parts = Trainables(s, new_stream(s), optimizer, scheduler, guard)
        self.state = initial_state(cfg)
        if guard is not None:
            guard.retire_fixed_by(self.state.objective_name)
        self.watch = WeightWatch(self.loop_settings.max_weight_growth)
        self.rows: list[dict] = []

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def guard(self) -> Guard | None:
        return self.parts.guard

    # ---------------------------------------------------------------- checkpoints
    def save(self) -> Path:
        path = save_run(self.parts, self.state, self.run_dir, self.loop_settings.keep_checkpoints)
        self.log.event(self.step, "checkpoint", path=str(path))
        return path

    def load(self, path: Path) -> dict:
        """Weights, optimizer, scheduler, RNG, data position and counters from `path` (resume, rollback)."""
        saved = load_weights_and_position(self.parts, self.state, path)
        self.watch.forget()
        return saved

    def resume(self) -> None:
        path, saved = checkpoint.load_newest_intact(self.run_dir, self.load, self.warn)
        if path is None:
            self.log.truncate_after(-1)        # an attempt that died before its first checkpoint left rows
            return
        self.state.rollbacks, self.state.lr_scale, objective, self.state.dropped_teachers = resumed_changes(saved)
        if self.parts.scheduler.base_lrs[0] != self.settings.optim.lr * self.state.lr_scale:   # optim.lr changed
            set_peak_lr(self.parts.optimizer, self.parts.scheduler, self.settings.optim, self.state.lr_scale)
        if objective:
            self.switch_objective(objective)
        if self.guard is not None and saved.get("guard"):
            self.guard.load_state_dict(saved["guard"])
        if self.guard is not None:          # a checkpoint saved without eval/ baselines (older, or guard was off)
            self.guard.observe_before({f"eval/{k}": v for k, v in self.before_eval().items()})
        self.apply_dropped()
        self.log.truncate_after(self.step)
        self.log.event(self.step, "resumed", checkpoint=str(path))
        if self.control is not None:
            self.control.resumed(self.logged_rows(), self.state)

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        with self.s.dist.full_weights():
            identity = identity_self_test(self.s)
        if not identity < 1e-4:
            raise TrainingError(f"identity self-test failed: the student scored against itself gives KL {identity:.3g} "
                                f"(expected 0); the scoring path misaligns prompts or positions")
        self.log.event(0, "start", skipped_prompts=self.s.skipped_prompts, notes=self.s.report.notes,
                       identity_kl=identity)
        if self.loop_settings.eval_every:       # the "before" numbers, logged as step 0
            with self.s.dist.full_weights():
                result = evaluate_session(self.s, teacher_side=True, max_new_tokens=self.state.max_new_tokens)
            before = {f"eval/{k}": v for k, v in result.items()}
            self.log.log(0, before)
            if self.guard is not None:
                self.guard.observe_before(before)     # eval/ rules compare with the untrained student

    # ---------------------------------------------------------------- the loop
    def loop(self, until: int | None = None) -> list[dict]:
        """Steps until optim.steps (or `until`, sooner: benchmarks stop before the final checkpoint)."""
        c = self.loop_settings
        last = c.steps if until is None else min(until, c.steps)
        self.bar = tqdm(total=last, initial=self.step, desc=c.mode, disable=not (c.progress and self.s.dist.main),
                        dynamic_ncols=True)
        try:
            while self.step < last and not self.switched():
                self.one_step()
        finally:
            self.bar.close()
        if c.profile and self.rows and self.s.dist.main:
            print(format_breakdown(breakdown(self.rows), max(1, len(self.rows) - 1)))
        return self.rows

    def switched(self) -> bool:
        """The control's criterion ended the run early: checkpoint this step (the stage's output) and stop."""
        reason = None if self.control is None or self.step == 0 else self.control.done(self.step, self.logged_rows())
        if reason is None:
            return False
        latest = checkpoint.latest(self.run_dir)
        if latest is None or latest.name != f"{checkpoint.PREFIX}{self.step:08d}":
            self.save()
        self.log.event(self.step, "switch", reason=reason)
        return True

    def one_step(self) -> None:
        c, p = self.loop_settings, self.parts
        timer = PhaseTimer(sync=c.profile)
        self.watch.before_step(self.s.student)
        outcome = train_step(self.s, self.settings, self.state, p.stream, p.optimizer, p.scheduler, timer)
        self.state.step += 1
        if outcome.finite:            # a diverged step raises here: nothing of it is logged or saved
            self.watch.after_step(self.s.student, self.step, outcome.metrics["train/lr"], checkpoint.latest(self.run_dir))
        self.state.bad_streak = 0 if outcome.finite else self.state.bad_streak + 1
        metrics = {**outcome.metrics, "data/skipped_prompts": self.s.skipped_prompts}
        if c.eval_every and self.step % c.eval_every == 0:
            with self.s.dist.full_weights():
                result = evaluate_session(self.s, max_new_tokens=self.state.max_new_tokens)
            result.update(gap_recovery(self.before_eval(), result))
            metrics.update({f"eval/{k}": v for k, v in result.items()})
        if self.control is not None:
            self.control.after_step(self.step, metrics, self.state)
        self.record(metrics, outcome.texts, timer)
        if not outcome.finite:
            self.nonfinite(metrics)
        elif self.guard is not None and self.act(self.guard.observe(self.step, metrics)):
            return                                  # rolled back: the step counter moved back
        if self.step % c.save_every == 0 or self.step == c.steps:
            self.save()

    def record(self, metrics: dict, texts: list[str], timer: PhaseTimer) -> None:
        """Log the step's metrics (and sampled texts), keep its row, move the progress bar."""
        with timer("logging"):
            self.log.log(self.step, metrics)
            every = self.loop_settings.sample_every
            if every and (self.step == 1 or self.step % every == 0 or self.step == self.loop_settings.steps):
                self.log.samples(self.step, texts)
        # metrics.jsonl was written before the logging finished: its cost reaches only the in-memory rows
        self.rows.append({"step": self.step, **metrics, "time/logging_s": timer.seconds["logging"],
                          "time/step_s": metrics["time/step_s"] + timer.seconds["logging"]})
        self.bar.n = self.step
        self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", len=f"{metrics['rollout/length_mean']:.1f}")

    def warn(self, text: str) -> None:
        warn(text)
        self.log.event(self.step, "warning", text=text)

    def logged_rows(self) -> list[dict]:
        """Every metrics row this run directory holds (the stage control's criteria read them)."""
        return read_metrics(self.log.path) if self.log.path.is_file() else []

    def before_eval(self) -> dict:
        """The step-0 evaluation of this run (from metrics.jsonl, so it survives resumes)."""
        first = next((r for r in self.logged_rows() if r["step"] == 0), {})
        return {k[len("eval/"):]: v for k, v in first.items() if k.startswith("eval/")}

    def nonfinite(self, metrics: dict) -> None:
        self.log.event(self.step, "skipped_nonfinite", loss=str(metrics["train/loss"]),
                       grad_norm=str(metrics["train/grad_norm"]))
        if self.state.bad_streak >= self.loop_settings.max_bad_steps:
            self.save()
            raise TrainingError(f"{self.state.bad_streak} non-finite steps in a row (loss {metrics['train/loss']}, grad "
                                f"norm {metrics['train/grad_norm']}); the weights were not updated by them. Check the "
                                f"teacher's logits and lower optim.lr; events are in {self.log.events}")

    def switch_objective(self, name: str) -> None:
        """Use objective `name` from now on, keeping the configured options it accepts (k, support, ...)."""
        self.state.objective = bind_objective(name, self.loop_settings.objective_options, self.settings.diagnostics,
                                              strict=False)
        self.state.objective_name, self.state.switched = name, True
        if self.guard is not None:
            self.guard.retire_fixed_by(name)

    def can_serve(self, name: str) -> bool:
        """Whether the run's teacher can serve objective `name` (a cross-tokenizer teacher cannot serve the
        guard's default remedy, student-support top-K); logs a skipped switch."""
        options = self.loop_settings.objective_options
        problem = None if self.s.teacher is None else teacher_mismatch(name, options, self.s.teacher.provides)
        if problem:
            self.log.event(self.step, "switch_skipped", objective=name, reason=problem)
        return problem is None

    # ---------------------------------------------------------------- the guard's actions
    def act(self, alarms: list[Alarm]) -> bool:
        """Log every alarm; carry out the most severe action. True when the run rolled back."""
        for alarm in alarms:
            self.log.event(self.step, "alarm", **{k: v for k, v in asdict(alarm).items() if k != "step"})
            self.bar.write(describe_alarm(alarm))
        alarm = most_severe(alarms)
        if alarm is None:
            return False
        if alarm.action in ("stop", "rollback"):
            return self.stop(alarm) if alarm.action == "stop" else self.rollback(alarm)
        for drop in [a for a in alarms if a.action == "drop_teacher"]:
            self.drop_teacher(drop)
        return False

    def drop_teacher(self, alarm: Alarm) -> None:
        """Stop using the alarm's teacher from the next step on (or stop the run when none would be left)."""
        plan = plan_drop(alarm.teacher, self.state.dropped_teachers, self.s.teacher.member_weights())
        if plan.stop_reason:
            self.stop(alarm, plan.stop_reason)
        self.state.dropped_teachers = plan.dropped
        self.apply_dropped()
        self.log.event(self.step, "drop_teacher", rule=alarm.rule, teacher=alarm.teacher, dropped=list(plan.dropped))
        self.bar.write(f"guard: teacher {alarm.teacher!r} dropped at step {self.step}; now {self.state.changes()}")

    def apply_dropped(self) -> None:
        """Make the teacher and the guard agree with the run's dropped teachers (after a drop, a resume)."""
        if not self.state.dropped_teachers:
            return
        self.s.teacher.drop(self.state.dropped_teachers)
        for name in self.state.dropped_teachers:
            if self.guard is not None:
                self.guard.retire_teacher(name)

    def stop(self, alarm: Alarm, reason: str = "") -> bool:
        self.save()
        self.log.event(self.step, "guard_stop", rule=alarm.rule, reason=reason)
        raise GuardStopped(describe_alarm(alarm) + (f"; {reason}" if reason else "") +
                           f". Checkpoint saved at step {self.step}; see {self.log.events}")

    def rollback(self, alarm: Alarm) -> bool:
        done = {int(path.name[len(checkpoint.PREFIX):]): path for path in checkpoint.completed(self.run_dir)}
        rule = self.guard.rule(alarm.rule)
        plan = plan_rollback(rule, alarm.onset, list(done), self.state.rollbacks, self.loop_settings.max_rollbacks,
                             self.state.lr_scale, self.state.objective_name)
        drop = plan_drop(rule.teacher, self.state.dropped_teachers, self.s.teacher.member_weights()) \
            if rule.drop_teacher else None
        if plan.stop_reason or (drop is not None and drop.stop_reason):
            return self.stop(alarm, plan.stop_reason or drop.stop_reason)
        failed_at = self.step
        self.load(done[plan.to_step])
        self.state.rollbacks += 1
        self.log.move_after(self.step, "abandoned.jsonl")
        if plan.lr_scale != self.state.lr_scale:
            self.state.lr_scale = plan.lr_scale
            set_peak_lr(self.parts.optimizer, self.parts.scheduler, self.settings.optim, plan.lr_scale)
        if plan.objective and self.can_serve(plan.objective):
            self.switch_objective(plan.objective)
        if drop is not None:
            self.state.dropped_teachers = drop.dropped
            self.apply_dropped()
        torch.manual_seed(self.loop_settings.seed + 7919 * self.state.rollbacks)   # a replay must not repeat the samples
        self.guard.reset_tracks()
        self.log.event(self.step, "rollback", rule=alarm.rule, from_step=failed_at, to_step=self.step,
                       changes=self.state.changes())
        self.bar.write(f"guard: rolled back from step {failed_at} to step {self.step}; now {self.state.changes()}")
        return True


def run(cfg: Config, resume: bool = False, session: Session | None = None, control=None) -> list[dict]:
    """Train; returns the metrics rows logged by this call. `control`: see `opdkit.recipes.schedules.StageControl`."""
    run_dir = Path(cfg.run.out)
    if resume:
        rundir.require_resumable(run_dir)
    # one owner per run directory, taken first: a second run learns that before anything else
    with rundir.RunLock(run_dir, enabled=os.environ.get("RANK", "0") == "0"):
        if not resume and checkpoint.latest(run_dir) is not None:
            raise TrainingError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose a new run.out")
        history, changes = check_resume_config(cfg, run_dir) if resume else ([], [])
        done = rundir.finished_step(run_dir, cfg.optim.steps) if resume else None
        if done is not None:
            print(f"opdkit: {run_dir} already finished: its newest checkpoint is step {done} (optim.steps="
                  f"{cfg.optim.steps}); nothing to do. To train further, resume with a larger optim.steps",
                  file=sys.stderr)
            return []
        run_dir.mkdir(parents=True, exist_ok=True)
        s = session or build_session(cfg)
        distributed.setup(s, cfg.run.parallel)
        runner = Runner(s, run_dir, control)
        if resume:
            runner.resume()
        for change in changes:
            change["step"] = runner.step
            runner.log.event(runner.step, "config_change", **{k: v for k, v in change.items() if k != "step"})
        if s.dist.main:
            save_config(cfg, run_dir / "config.yaml", history + changes)
        try:
            if runner.step == 0:
                runner.start()
            return runner.loop()
        except KeyboardInterrupt:
            newest = checkpoint.latest(run_dir)
            raise Interrupted(f"interrupted at step {runner.step}; resume with --resume (it continues from "
                              f"{newest.name if newest else 'step 0: no checkpoint yet'})") from None
        finally:
            distributed.teardown(s)
