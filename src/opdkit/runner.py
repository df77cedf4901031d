"""The run around the step: start, resume, evaluate, guard, checkpoint.

`run(cfg, resume)` builds the session, restores the newest complete checkpoint when asked
(weights, optimizer, scheduler, RNG, data position, guard state and any changes the guard
made), runs the identity self-test and the "before" evaluation on a fresh run, then loops:
step -> metrics -> guard -> checkpoint. A guard rollback reloads the newest checkpoint from
before the alarm's onset, moves the abandoned metrics rows to `abandoned.jsonl`, applies
the rule's changes (learning-rate factor, objective switch), reseeds sampling, and goes on.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from opdkit import checkpoint, distributed, rundir
from opdkit.config import HISTORY, Config, config_from_dict, read_yaml, save_config, to_dict
from opdkit.diagnostics import with_diagnostics
from opdkit.divergence import WeightWatch
from opdkit.errors import Interrupted
from opdkit.guard import Alarm, Guard, describe_alarm
from opdkit.metrics import MetricLog
from opdkit.profile import PhaseTimer, breakdown, format_breakdown
from opdkit.objectives import OBJECTIVES, make_objective
from opdkit.session import Session, build_session, new_stream
from opdkit.train import TrainingError, lr_factor, make_optimizer, train_step


class GuardStopped(TrainingError):
    """The guard stopped the run; the message is the alarm."""


def checkpoint_modules(s: Session) -> dict:
    return {"student": s.student, **(s.teacher.checkpoint_modules() if s.teacher is not None else {})}


def check_resume_config(cfg: Config, run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(history kept in config.yaml, changes this resume makes: optim.lr only, see opdkit.rundir)."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return [], []
    tree = read_yaml(saved) or {}
    history = list(tree.get(HISTORY) or [])
    old = to_dict(config_from_dict(tree))
    new = to_dict(cfg)
    changes = rundir.resume_changes(old, new, step=-1)      # the step is filled in once resumed
    # Only the length of the run and how it is spread over processes may change on resume.
    old["optim"]["steps"] = new["optim"]["steps"]
    old["run"]["parallel"] = new["run"]["parallel"]
    old["run"]["progress"] = new["run"]["progress"]
    old["run"]["profile"] = new["run"]["profile"]
    if old != new:
        diff = [f"{sec}.{k}" for sec in new if isinstance(new[sec], dict) for k in new[sec] if old[sec].get(k) != new[sec][k]]
        raise TrainingError(f"--resume with a different config than {saved}: {diff or ['mode']} changed; "
                            f"start a new run directory or restore the original values")
    return history, changes


def switch_objective(s: Session, name: str) -> None:
    """Use objective `name`, keeping the current options it accepts (k, support, ...)."""
    import inspect
    spec = OBJECTIVES[name]
    allowed = set(inspect.signature(spec.fn).parameters) - {"logits", "inputs"} - set(spec.options)
    options = {k: v for k, v in s.cfg.objective.options.items() if k in allowed}
    objective = make_objective(name, **options)
    s.objective = with_diagnostics(objective) if s.cfg.run.diagnostics else objective
    s.objective_name = name


class Runner:
    def __init__(self, s: Session, run_dir: Path, control=None):
        self.s, self.cfg, self.run_dir = s, s.cfg, run_dir
        # A stage's schedule and switch criterion (opdkit.recipe.StageControl): `resumed(runner)`,
        # `after_step(runner, metrics)` may change settings and add metrics, `done(runner)` -> reason or None.
        self.control = control
        self.log = MetricLog(run_dir, self.cfg.run.trackers) if s.dist.main else distributed.NullLog(run_dir)
        self.stream = new_stream(s)
        self.optimizer, self.scheduler = make_optimizer(s)
        g = self.cfg.guard
        self.guard = Guard.from_config(g.rules, g.baseline_steps, g.use_defaults, g.disable) if g.enabled else None
        self.retire_rules_fixed_by(s.objective_name)
        self.step, self.bad_streak, self.rollbacks = 0, 0, 0
        self.watch = WeightWatch(self.cfg.run.max_weight_growth)
        self.changes: dict = {}          # what the guard changed: {"lr_scale": f, "objective": name}
        self.rows: list[dict] = []

    # ---------------------------------------------------------------- state
    def save(self) -> Path:
        state = {"step": self.step, "stream": self.stream.state_dict(),
                 "optimizer": distributed.optimizer_state(self.s, self.optimizer),
                 "scheduler": self.scheduler.state_dict(), "rng": checkpoint.rng_state(), "bad_streak": self.bad_streak,
                 "rollbacks": self.rollbacks, "changes": dict(self.changes),
                 "guard": None if self.guard is None else self.guard.state_dict()}
        path = distributed.save(self.s, self.run_dir, self.step, checkpoint_modules(self.s), state,
                                self.cfg.run.keep_checkpoints)
        self.log.event(self.step, "checkpoint", path=str(path))
        return path

    def load(self, path: Path) -> dict:
        state = distributed.load(self.s, path, checkpoint_modules(self.s), self.optimizer)
        self.stream.load_state_dict(state["stream"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step, self.bad_streak = state["step"], state["bad_streak"]
        self.watch.forget()
        return state

    def resume(self) -> None:
        path, state = checkpoint.load_newest_intact(self.run_dir, self.load, self.warn)
        if path is None:
            self.log.truncate_after(-1)        # an attempt that died before its first checkpoint left rows
            return
        self.rollbacks, self.changes = state.get("rollbacks", 0), dict(state.get("changes", {}))
        scale = self.changes.get("lr_scale", 1.0)
        if self.scheduler.base_lrs[0] != self.cfg.optim.lr * scale:      # optim.lr changed on --resume
            self.set_lr_scale(scale)
        if self.changes.get("objective"):
            switch_objective(self.s, self.changes["objective"])
            self.retire_rules_fixed_by(self.changes["objective"])
        if self.guard is not None and state.get("guard"):
            self.guard.load_state_dict(state["guard"])
        self.log.truncate_after(self.step)
        self.log.event(self.step, "resumed", checkpoint=str(path))
        if self.control is not None:
            self.control.resumed(self)

    # ---------------------------------------------------------------- start
    def start(self) -> None:
        from opdkit.evaluate import evaluate_session, identity_self_test
        with self.s.dist.full_weights():
            identity = identity_self_test(self.s)
        if not identity < 1e-4:
            raise TrainingError(f"identity self-test failed: the student scored against itself gives KL {identity:.3g} "
                                f"(expected 0); the scoring path misaligns prompts or positions")
        self.log.event(0, "start", skipped_prompts=self.s.skipped_prompts, notes=self.s.report.notes,
                       identity_kl=identity)
        if self.cfg.run.eval_every and self.cfg.data.eval:       # the "before" numbers, logged as step 0
            with self.s.dist.full_weights():
                result = evaluate_session(self.s, teacher_side=True)
            self.log.log(0, {f"eval/{k}": v for k, v in result.items()})

    # ---------------------------------------------------------------- the loop
    def loop(self, until: int | None = None) -> list[dict]:
        """Steps until optim.steps (or `until`, sooner: benchmarks stop before the final checkpoint)."""
        from tqdm import tqdm
        cfg = self.cfg
        last = cfg.optim.steps if until is None else min(until, cfg.optim.steps)
        self.bar = tqdm(total=last, initial=self.step, desc=cfg.mode, disable=not (cfg.run.progress and self.s.dist.main),
                        dynamic_ncols=True)
        try:
            while self.step < last and not self.switched():
                self.one_step()
        finally:
            self.bar.close()
        if cfg.run.profile and self.rows and self.s.dist.main:
            print(format_breakdown(breakdown(self.rows), max(1, len(self.rows) - 1)))
        return self.rows

    def switched(self) -> bool:
        """The control's criterion ended the run early: checkpoint this step (the stage's output) and stop."""
        reason = None if self.control is None or self.step == 0 else self.control.done(self)
        if reason is None:
            return False
        latest = checkpoint.latest(self.run_dir)
        if latest is None or latest.name != f"{checkpoint.PREFIX}{self.step:08d}":
            self.save()
        self.log.event(self.step, "switch", reason=reason)
        return True

    def one_step(self) -> None:
        from opdkit.evaluate import evaluate_session, gap_recovery
        cfg = self.cfg
        timer = PhaseTimer(sync=cfg.run.profile)
        self.watch.before_step(self.s.student)
        outcome = train_step(self.s, self.stream, self.optimizer, self.scheduler, timer)
        self.step += 1
        if outcome.finite:            # a diverged step raises here: nothing of it is logged or saved
            self.watch.after_step(self.s.student, self.step, outcome.metrics["train/lr"], checkpoint.latest(self.run_dir))
        self.bad_streak = 0 if outcome.finite else self.bad_streak + 1
        metrics = {**outcome.metrics, "data/skipped_prompts": self.s.skipped_prompts}
        if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and cfg.data.eval:
            with self.s.dist.full_weights():
                result = evaluate_session(self.s)
            result.update(gap_recovery(self.before_eval(), result))
            metrics.update({f"eval/{k}": v for k, v in result.items()})
        if self.control is not None:
            self.control.after_step(self, metrics)
        with timer("logging"):
            self.log.log(self.step, metrics)
            every = cfg.run.sample_every
            if every and (self.step == 1 or self.step % every == 0 or self.step == cfg.optim.steps):
                self.log.samples(self.step, outcome.texts)
        # metrics.jsonl was written before the logging finished: its cost reaches only the in-memory rows
        self.rows.append({"step": self.step, **metrics, "time/logging_s": timer.seconds["logging"],
                          "time/step_s": metrics["time/step_s"] + timer.seconds["logging"]})
        self.bar.n = self.step
        self.bar.set_postfix(loss=f"{metrics['train/loss']:.4f}", len=f"{metrics['rollout/length_mean']:.1f}")
        if not outcome.finite:
            self.nonfinite(metrics)
        elif self.guard is not None and self.act(self.guard.observe(self.step, metrics)):
            return                                  # rolled back: the step counter moved back
        if self.step % cfg.run.save_every == 0 or self.step == cfg.optim.steps:
            self.save()

    def warn(self, text: str) -> None:
        from opdkit.metrics import warn
        warn(text)
        self.log.event(self.step, "warning", text=text)

    def before_eval(self) -> dict:
        """The step-0 evaluation of this run (from metrics.jsonl, so it survives resumes)."""
        from opdkit.metrics import read_metrics
        rows = read_metrics(self.log.path) if self.log.path.is_file() else []
        first = next((r for r in rows if r["step"] == 0), {})
        return {k[len("eval/"):]: v for k, v in first.items() if k.startswith("eval/")}

    def nonfinite(self, metrics: dict) -> None:
        self.log.event(self.step, "skipped_nonfinite", loss=str(metrics["train/loss"]),
                       grad_norm=str(metrics["train/grad_norm"]))
        if self.bad_streak >= self.cfg.run.max_bad_steps:
            self.save()
            raise TrainingError(f"{self.bad_streak} non-finite steps in a row (loss {metrics['train/loss']}, grad norm "
                                f"{metrics['train/grad_norm']}); the weights were not updated by them. Check the "
                                f"teacher's logits and lower optim.lr; events are in {self.log.events}")

    def set_lr_scale(self, scale: float) -> None:
        """Peak LR = optim.lr * scale from now on, at the schedule's current position."""
        o = self.cfg.optim
        self.scheduler.base_lrs = [o.lr * scale for _ in self.optimizer.param_groups]
        factor = lr_factor(self.scheduler.last_epoch, o.warmup_steps, o.steps, o.schedule)
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * factor

    # ---------------------------------------------------------------- the guard's actions
    def act(self, alarms: list[Alarm]) -> bool:
        """Log every alarm; carry out the most severe action. True when the run rolled back."""
        for alarm in alarms:
            self.log.event(self.step, "alarm", **{k: v for k, v in asdict(alarm).items() if k != "step"})
            self.bar.write(describe_alarm(alarm))
        for action in ("stop", "rollback"):
            for alarm in alarms:
                if alarm.action == action:
                    return self.stop(alarm) if action == "stop" else self.rollback(alarm)
        return False

    def stop(self, alarm: Alarm, reason: str = "") -> bool:
        self.save()
        self.log.event(self.step, "guard_stop", rule=alarm.rule, reason=reason)
        raise GuardStopped(describe_alarm(alarm) + (f"; {reason}" if reason else "") +
                           f". Checkpoint saved at step {self.step}; see {self.log.events}")

    def retire_rules_fixed_by(self, objective: str) -> None:
        """Drop rules marked retire_when_switched whose remedy is `objective`, once it is in use.

        Such a rule watches for a failure of other objectives (topk_mass_drain: the biased
        gradient of unnormalised top-K drains P_K). Under its remedy the watched metric has a
        different, sound fixed point (the tail objective moves P_K to the teacher's Q_K, which
        may sit below the start), so the same bound would raise false alarms and roll back
        again and again.
        """
        if self.guard is not None:
            self.guard.rules = [r for r in self.guard.rules
                                if not (r.retire_when_switched and r.switch_objective == objective)]

    def rollback(self, alarm: Alarm) -> bool:
        healthy = [p for p in checkpoint.completed(self.run_dir) if int(p.name.split("_")[1]) < alarm.onset]
        if self.rollbacks >= self.cfg.guard.max_rollbacks:
            return self.stop(alarm, f"{self.rollbacks} rollbacks already (guard.max_rollbacks)")
        if not healthy:
            return self.stop(alarm, f"no checkpoint from before step {alarm.onset} to roll back to")
        failed_at = self.step
        self.load(healthy[-1])
        self.rollbacks += 1
        self.log.move_after(self.step, "abandoned.jsonl")
        rule = self.guard.rule(alarm.rule)
        if rule.lr_factor != 1.0:
            self.changes["lr_scale"] = self.changes.get("lr_scale", 1.0) * rule.lr_factor
            self.set_lr_scale(self.changes["lr_scale"])
        if rule.switch_objective and rule.switch_objective != self.s.objective_name:
            switch_objective(self.s, rule.switch_objective)
            self.changes["objective"] = rule.switch_objective
            self.retire_rules_fixed_by(rule.switch_objective)
        torch.manual_seed(self.cfg.run.seed + 7919 * self.rollbacks)   # a replay must not repeat the same samples
        self.guard.reset_tracks()
        self.log.event(self.step, "rollback", rule=alarm.rule, from_step=failed_at, to_step=self.step,
                       changes=dict(self.changes))
        self.bar.write(f"guard: rolled back from step {failed_at} to step {self.step}; now {self.changes}")
        return True


def run(cfg: Config, resume: bool = False, session: Session | None = None, control=None) -> list[dict]:
    """Train; returns the metrics rows logged by this call. `control`: see Runner."""
    import os
    import sys
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
            distributed.teardown()
