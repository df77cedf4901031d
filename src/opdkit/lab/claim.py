"""The claim record, the experiment context, and the statistics and formatting every claim shares.

A claim's experiment runs per seed and returns numbers. Its pre-registered statistics
(`verdict.Stat`, each with a side and a threshold) turn the numbers of all seeds into a
verdict (reproduced, not reproduced, inconclusive); `describe` adds the raw numbers as text.
Accuracy that enters a verdict is measured on held-out prompts after training
(`heldout_eval`: greedy and sampled, with the sampled estimate's standard error), never on
the training rollouts.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from opdkit.engine.config import load_config
from opdkit.engine.evaluate import score_responses
from opdkit.engine.runner import run
from opdkit.engine.session import build_session, load_items
from opdkit.lab.carry import build_carry_testbed
from opdkit.lab.testbed import build_pi_testbed, build_testbed, opd_overrides, split_task
from opdkit.lab.verdict import judge_stats
from opdkit.models.checkpoint import seeded
from opdkit.objectives import make_objective
from opdkit.tasks.rewards import make_check, make_reward


@dataclass
class Claim:
    id: str
    title: str
    paper: str                      # what the paper reports
    hypothesis: str                 # what we test, in the miniature (setup included)
    null: str                       # the same pipeline with the effect removed: must not pass
    stats: list = field(default_factory=list)       # verdict.Stat: the pre-registered statistics
    run: Callable | None = None     # (ctx, seed) -> dict of numbers
    describe: Callable | None = None    # list of per-seed dicts -> the raw numbers as text
    null_arm: Callable | None = None    # one seed's numbers -> its null arm's, when the null is run
    figures: list = field(default_factory=list)     # run-dir names (per seed) for the report

    @property
    def threshold(self) -> str:
        return "; ".join(s.text() for s in self.stats)

    def judge(self, results: list[dict]) -> tuple[str, str]:
        verdict, stats = judge_stats(self.stats, results, self.null_arm)
        return verdict, (self.describe(results) + " | " if self.describe else "") + stats


@dataclass
class Context:
    out: Path
    quick: bool
    memo: dict = field(default_factory=dict)     # runs shared between claims (the sampled-token baselines)

    def testbed(self, seed: int) -> Path:
        return build_testbed(self.out / "cache" / f"testbed-seed{seed}", students=(60, 100), seed=seed)

    def pi_testbed(self, seed: int) -> Path:
        return build_pi_testbed(self.out / "cache" / f"pi-testbed-seed{seed}", seed=seed)

    def partial_pi_testbed(self, seed: int, shares: tuple[float, float]) -> Path:
        name = f"pi-partial-{shares[0]:g}-{shares[1]:g}-seed{seed}"
        return build_pi_testbed(self.out / "cache" / name, seed=seed, partial=shares)

    def carry_testbed(self, seed: int) -> Path:
        return build_carry_testbed(self.out / "cache" / f"carry-testbed-seed{seed}", seed=seed)

    def steps(self, quick: int, full: int) -> int:
        return quick if self.quick else full


def smoothed(values: list[float], window: int = 3) -> list[float]:
    return [statistics.fmean(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]


def collapse_step(rows: list[dict], fraction: float = 0.5) -> int | None:
    """First step where the 3-step mean of sampled accuracy falls below `fraction` x its peak."""
    acc = smoothed([r["rollout/accuracy"] for r in rows])
    peak = max(acc)
    return next((r["step"] for r, a in zip(rows, acc) if a < fraction * peak), None)


def tail_mean(rows: list[dict], key: str, n: int = 10) -> float | None:
    values = [r[key] for r in rows[-n:] if isinstance(r.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def heldout_eval(s, items: list, samples: int = 16, seed: int = 0, check: str = "") -> dict:
    """Greedy and sampled (temperature 1, `samples` per prompt) accuracy of the session's student on
    `items`, which it is not trained on; `sampled_se` is the standard error of the sampled estimate,
    clustered by prompt (samples of one prompt are not independent). With `check`, the same for a rule."""
    import torch
    score = make_reward(s.cfg.reward.kind)
    rule = make_check(check) if check else None
    out = {}
    with seeded(seed), torch.no_grad():
        for mode, n in (("greedy", 1), ("sampled", samples)):
            prompts = [it.prompt_ids for it in items for _ in range(n)]
            rollouts = s.sampler.sample(s.student, prompts, max_new_tokens=s.cfg.rollout.max_new_tokens,
                                        temperature=1.0, top_p=1.0, greedy=mode == "greedy")
            texts = s.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
            answers = [it.example.answer for it in items for _ in range(n)]
            hits = [score(t, a) for t, a in zip(texts, answers)]
            per_prompt = [statistics.fmean(hits[i * n:(i + 1) * n]) for i in range(len(items))]
            out[f"{mode}_accuracy"] = statistics.fmean(per_prompt)
            out[f"{mode}_length"] = statistics.fmean(len(r) for r in rollouts.response_ids)
            if rule:
                out[f"{mode}_rule_rate"] = statistics.fmean(float(rule(t)) for t in texts)
            if mode == "sampled":
                out["sampled_se"] = statistics.stdev(per_prompt) / len(items) ** 0.5 if len(items) > 1 else 0.0
                out["texts"] = texts[:64]
                if s.teacher is not None and not s.cfg.data.pi:
                    out.update(shape_metrics(s, rollouts, [it.example for it in items for _ in range(n)]))
    return out


def teacher_eval(s, items: list, samples: int = 16, seed: int = 0, check: str = "") -> dict:
    """The teacher (PI-conditioned in OPSD) on `items`: greedy and sampled accuracy, and rule rate with `check`."""
    import torch
    score, rule = make_reward(s.cfg.reward.kind), make_check(check) if check else None
    out = {}
    with seeded(seed), torch.no_grad(), s.teacher.context():
        for mode, n in (("greedy", 1), ("sampled", samples)):
            prompts = [s.teacher.renderer(it.example) for it in items for _ in range(n)]
            rollouts = s.sampler.sample(s.teacher.model(), prompts, max_new_tokens=s.cfg.rollout.max_new_tokens,
                                        temperature=1.0, top_p=1.0, greedy=mode == "greedy")
            texts = s.tokenizer.batch_decode(rollouts.response_ids, skip_special_tokens=True)
            answers = [it.example.answer for it in items for _ in range(n)]
            out[f"{mode}_accuracy"] = statistics.fmean(score(t, a) for t, a in zip(texts, answers))
            if rule:
                out[f"{mode}_rule_rate"] = statistics.fmean(float(rule(t)) for t in texts)
    return out


def shape_metrics(s, rollouts, examples: list, k: int = 5) -> dict:
    """On sampled responses: the renormalised top-K KL to the teacher (the 'shape' on the student's
    top-K, P_K aside) and the token means of P_K and Q_K, as `topk_rkl_renorm` reports them."""
    rollouts.meta = examples
    means, _ = score_responses(s, s.teacher, rollouts, make_objective("topk_rkl_renorm", k=k))
    return {"shape_kl": means.get("loss", 0.0), "p_k": means.get("p_k"), "q_k": means.get("q_k")}


@dataclass
class Run:
    rows: list                  # training metrics, one per step
    before: dict                # heldout_eval of the start
    after: dict                 # heldout_eval of the end


def opd(ctx: Context, seed: int, name: str, student: str, objective: str, k: int = 5, steps: int = 80,
        extra: tuple[str, ...] = (), teacher: str = "teacher", max_new_tokens: int = 4, root: Path | None = None,
        train: str = "task_train.jsonl", heldout: str = "task_heldout.jsonl", score_teacher: bool = False) -> Run:
    """One OPD run (guard off: the claims are about unguarded dynamics) on `root` (default: the seed's
    addition testbed), trained on `train` and evaluated before and after on `heldout`."""
    import shutil
    root = root or ctx.testbed(seed)
    split_task(root, seed)
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = opd_overrides(root, student, out, objective, k=k, steps=steps, teacher=teacher,
                              max_new_tokens=max_new_tokens) + [f"data.train={root / train}", "reward.kind=numeric"]
    if objective in ("rkl", "fkl", "sampled_rkl"):         # objectives without K
        overrides = [o for o in overrides if not o.startswith("objective.options")]
    cfg = load_config("distill", overrides=overrides + ["guard.enabled=false", f"run.seed={seed}",
                                                        "run.sample_every=5", *extra])
    s = build_session(cfg)
    items = load_items(cfg, str(root / heldout), s.student_prompt)[0]
    before = heldout_eval(s, items, seed=seed)
    if score_teacher:
        before.update({f"teacher_{k}": v for k, v in teacher_eval(s, items, seed=seed).items()})
    rows = run(cfg, session=s)
    return Run(rows, before, heldout_eval(s, items, seed=seed))


def summary(result) -> dict:
    """The numbers the claims read from one run: held-out accuracy before/after, training curves' ends."""
    rows = result.rows if isinstance(result, Run) else result
    held = {}
    if isinstance(result, Run):
        held = {"heldout_before": result.before["sampled_accuracy"], "heldout_after": result.after["sampled_accuracy"],
                "heldout_se": result.after["sampled_se"], "greedy_before": result.before["greedy_accuracy"],
                "greedy_after": result.after["greedy_accuracy"], "heldout_len_before": result.before["sampled_length"],
                "heldout_len_after": result.after["sampled_length"], "shape_kl_start": result.before.get("shape_kl"),
                "shape_kl_end": result.after.get("shape_kl"),
                "p_k_heldout": result.after.get("p_k"), "q_k_heldout": result.after.get("q_k")}
    return {**held, "acc_start": statistics.fmean(r["rollout/accuracy"] for r in rows[:3]),
            "acc_end": tail_mean(rows, "rollout/accuracy"), "pk_qk_end": tail_mean(rows, "diag/pk_qk_ratio"),
            "p_k_end": tail_mean(rows, "diag/p_k"), "len_start": statistics.fmean(r["rollout/length_mean"] for r in rows[:3]),
            "len_end": tail_mean(rows, "rollout/length_mean"), "hedge_start": rows[0].get("diag/hedge_rate"),
            "hedge_end": tail_mean(rows, "diag/hedge_rate"), "entropy_end": tail_mean(rows, "diag/student_entropy"),
            "collapse_step": collapse_step(rows), "steps": len(rows),
            "acc_two_thirds": statistics.fmean(r["rollout/accuracy"]
                                               for r in rows[2 * len(rows) // 3 - 5:2 * len(rows) // 3 + 5])}


def fmt(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.3g}" + (f" +- {statistics.pstdev(xs):.2g}" if len(xs) > 1 else "")

