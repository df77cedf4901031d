"""OPSD claims on the PI testbeds: C8 (a shared rule is internalised), C9 (instance-specific PI
is not; the student moves toward the consensus), C11 (OPSD vs GRPO at matched sampled tokens),
C12 (frozen vs live vs EMA self-teacher, SDFT's comparison).

Every run trains on 20 of the 25 sums (or on the training key items) and is evaluated before and
after on the 5 held-out sums (`claim.heldout_eval`). C11 and C12 use partial PI testbeds whose
student says "!" unprompted now and then (GRPO has a reward to find); C12's teacher also follows
the rule only partly (a moving self-teacher has room to differ from the frozen one), C11's fully
(OPSD's ceiling is not the teacher's own rule rate).
"""
from __future__ import annotations

import statistics

from opdkit.analysis.probes import consensus_kls
from opdkit.engine.config import load_config
from opdkit.engine.runner import run
from opdkit.engine.session import build_session, load_items
from opdkit.lab.claim import Context, fmt, heldout_eval, teacher_eval
from opdkit.lab.testbed import PARTIAL_C11, PARTIAL_C12, RULE, opsd_overrides, split_task

CHECK = "contains:!"


def _opsd(ctx: Context, seed: int, name: str, root, train: str, heldout: str, steps: int, fixed_pi: str = "",
          extra: tuple[str, ...] = (), mode: str = "self-distill", pre=None):
    """(session, held-out items, before, after, rows, pre) of one OPSD (or GRPO) run on a PI testbed;
    `pre(session, items)`, when given, measures the start (before any training) and is returned as `pre`."""
    import shutil
    out = ctx.out / "runs" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(mode, overrides=opsd_overrides(root, train, heldout, out, steps, CHECK, fixed_pi)
                      + ["run.eval_every=0", f"run.seed={seed}", *extra])
    s = build_session(cfg)
    items = load_items(cfg, str(root / heldout), s.student_prompt)[0]
    before = heldout_eval(s, items, seed=seed, check=CHECK)
    start = pre(s, items) if pre else None
    rows = run(cfg, session=s)
    return s, items, before, heldout_eval(s, items, seed=seed, check=CHECK), rows, start


def _split(root, seed: int):
    for name in ("sums", "sums_rule"):
        split_task(root, seed, name)
    return root


# ----------------------------------------------------------------------------- C8

def run_c8(ctx: Context, seed: int) -> dict:
    root = _split(ctx.pi_testbed(seed), seed)
    s, items, before, after, _, teacher = _opsd(ctx, seed, "C8-rule", root, "sums_train.jsonl", "sums_heldout.jsonl",
                                                ctx.steps(60, 100), RULE,
                                                pre=lambda s, items: teacher_eval(s, items, seed=seed, check=CHECK))
    return {"rule_before": before["greedy_rule_rate"], "rule_after": after["greedy_rule_rate"],
            "rule_teacher": teacher["greedy_rule_rate"], "acc_before": before["sampled_accuracy"],
            "acc_after": after["sampled_accuracy"], "acc_se": after["sampled_se"]}


def describe_c8(results: list[dict]) -> str:
    return (f"held-out greedy rule rate {fmt([r['rule_before'] for r in results])} -> "
            f"{fmt([r['rule_after'] for r in results])} (teacher with the rule {fmt([r['rule_teacher'] for r in results])});"
            f" held-out sampled accuracy {fmt([r['acc_before'] for r in results])} -> {fmt([r['acc_after'] for r in results])}"
            f" (SE {fmt([r['acc_se'] for r in results])})")


# ----------------------------------------------------------------------------- C9

def run_c9(ctx: Context, seed: int) -> dict:
    """OPSD on the training key items with each item's key as PI; KLs on those items before and after."""
    root = ctx.pi_testbed(seed)
    pis = [f"the key is {d}." for d in range(10)]

    def state(s, held=None) -> dict:
        """On the training items (where the item's own key could in principle be learnt): the KLs and accuracy."""
        train = load_items(s.cfg, s.cfg.data.train, s.student_prompt)[0]
        out = {"train": heldout_eval(s, train, seed=seed)["greedy_accuracy"], **consensus_kls(s, train, pis, seed=seed)}
        return {**out, "acc_teacher": teacher_eval(s, held, seed=seed)["greedy_accuracy"]} if held else out

    s, held, before, after, _, start = _opsd(ctx, seed, "C9-keys", root, "keys_train.jsonl", "keys_heldout.jsonl",
                                             ctx.steps(100, 150), pre=state)
    end = state(s)
    return {"acc_teacher": start["acc_teacher"], "held_before": before["greedy_accuracy"],
            "held_after": after["greedy_accuracy"], "train_before": start["train"], "train_after": end["train"],
            **{f"{k}_before": start[k] for k in ("kl_to_consensus", "kl_to_own_teacher")},
            **{f"{k}_after": end[k] for k in ("kl_to_consensus", "kl_to_own_teacher")}}


def describe_c9(results: list[dict]) -> str:
    return (f"on the training items, KL(student || consensus of 10 keys) {fmt([r['kl_to_consensus_before'] for r in results])}"
            f" -> {fmt([r['kl_to_consensus_after'] for r in results])}, KL(student || own-key teacher) "
            f"{fmt([r['kl_to_own_teacher_before'] for r in results])} -> {fmt([r['kl_to_own_teacher_after'] for r in results])}"
            f"; greedy key accuracy on training items {fmt([r['train_before'] for r in results])} -> "
            f"{fmt([r['train_after'] for r in results])}, held-out {fmt([r['held_before'] for r in results])} -> "
            f"{fmt([r['held_after'] for r in results])} (chance 0.1; teacher with the key "
            f"{fmt([r['acc_teacher'] for r in results])})")


# ----------------------------------------------------------------------------- C11 (OPSD vs GRPO)

def tokens_to_reach(rows: list[dict], key: str = "rollout/rule_rate", level: float = 0.8) -> int | None:
    """Sampled tokens spent until the 3-step mean of `key` first reaches `level` (None: never)."""
    spent, values = 0, []
    for r in rows:
        spent += r["rollout/tokens"]
        values.append(r.get(key, 0.0))
        if statistics.fmean(values[-3:]) >= level:
            return spent
    return None


def _values_within(rows: list[dict], budget: int, key: str) -> list[float]:
    """`key` at each step whose cumulative sampled tokens are within `budget` (0 where absent)."""
    spent, values = 0, []
    for r in rows:
        spent += r["rollout/tokens"]
        if spent > budget:
            break
        values.append(r.get(key, 0.0))
    return values


def rate_at_tokens(rows: list[dict], budget: int, key: str = "rollout/rule_rate") -> float:
    """The 3-step mean of `key` at the last step whose cumulative sampled tokens are within `budget`."""
    values = _values_within(rows, budget, key)
    return statistics.fmean(values[-3:]) if values else 0.0


def mean_rate_within(rows: list[dict], budget: int, key: str = "rollout/rule_rate") -> float:
    """Mean of `key` over the steps whose cumulative sampled tokens are within `budget`: the area under
    the rate-vs-tokens curve per step, so the faster learner scores higher even when both saturate."""
    values = _values_within(rows, budget, key)
    return statistics.fmean(values) if values else 0.0


def run_c11(ctx: Context, seed: int) -> dict:
    """OPSD (16 prompts x 1 sample, the rule as PI) vs GRPO (4 prompts x 4 samples, exact-match reward
    on "N!"), same steps; compared at the smaller of the two runs' sampled-token totals."""
    root, steps = _split(ctx.partial_pi_testbed(seed, PARTIAL_C11), seed), ctx.steps(60, 100)
    out = {}
    for mode, train, extra in (("self-distill", "sums_train.jsonl", (f"data.pi={RULE}",)),
                               ("grpo", "sums_rule_train.jsonl", ("reward.kind=exact", "rollout.samples_per_prompt=4",
                                                                  "optim.prompts_per_step=4", "optim.micro_batch=16"))):
        pre = (lambda s, items: teacher_eval(s, items, seed=seed, check=CHECK)) if mode == "self-distill" else None
        _, _, before, after, rows, start = _opsd(ctx, seed, f"C11-{mode}", root, train, "sums_heldout.jsonl", steps,
                                                 extra=extra, mode=mode, pre=pre)
        if start:
            out["teacher_rule"] = start["sampled_rule_rate"]
        out[mode] = {"rows": [{k: r.get(k, 0.0) for k in ("rollout/tokens", "rollout/rule_rate")} for r in rows],
                     "tokens_to_rule": tokens_to_reach(rows), "budget": sum(r["rollout/tokens"] for r in rows),
                     "rule_start": statistics.fmean(r.get("rollout/rule_rate", 0.0) for r in rows[:5]),
                     "rule_after": after["sampled_rule_rate"]}
    modes = ("self-distill", "grpo")
    matched = min(out[m]["budget"] for m in modes)
    for mode in modes:
        rows = out[mode].pop("rows")
        out[mode]["rule_at_matched"] = rate_at_tokens(rows, matched)
        out[mode]["mean_rule_within"] = mean_rate_within(rows, matched)
    out["matched_tokens"] = matched
    return out


def describe_c11(results: list[dict]) -> str:
    show = lambda mode: ", ".join("never" if r[mode]["tokens_to_rule"] is None else str(r[mode]["tokens_to_rule"])
                                  for r in results)
    return (f"OPSD's teacher (with the rule) sampled rule rate {fmt([r.get('teacher_rule') for r in results])}; "
            f"mean training rule rate within the matched sampled tokens ({fmt([r['matched_tokens'] for r in results])}): "
            f"OPSD {fmt([r['self-distill']['mean_rule_within'] for r in results])}, GRPO "
            f"{fmt([r['grpo']['mean_rule_within'] for r in results])}; at their end: OPSD "
            f"{fmt([r['self-distill']['rule_at_matched'] for r in results])}, GRPO "
            f"{fmt([r['grpo']['rule_at_matched'] for r in results])}; GRPO's rule rate in its first 5 steps "
            f"{fmt([r['grpo']['rule_start'] for r in results])}; tokens to a rule rate of 0.8: OPSD {show('self-distill')}, "
            f"GRPO {show('grpo')}; held-out sampled rule rate after: OPSD "
            f"{fmt([r['self-distill']['rule_after'] for r in results])}, GRPO {fmt([r['grpo']['rule_after'] for r in results])}")


# ----------------------------------------------------------------------------- C12 (self-teacher weights)

SELF_WEIGHTS = ("frozen", "live", "ema")


def run_c12(ctx: Context, seed: int) -> dict:
    """Shared-rule OPSD on the partial testbed once per self-teacher: frozen initial weights, live, EMA (0.99)."""
    root = _split(ctx.partial_pi_testbed(seed, PARTIAL_C12), seed)
    out = {}
    for weights in SELF_WEIGHTS:
        s, items, before, after, _, start = _opsd(ctx, seed, f"C12-{weights}", root, "sums_train.jsonl",
                                                  "sums_heldout.jsonl", ctx.steps(60, 100), RULE,
                                                  extra=(f"teacher.self_weights={weights}",),
                                                  pre=lambda s, items: teacher_eval(s, items, seed=seed, check=CHECK))
        out["teacher_rule_start"] = start["sampled_rule_rate"]
        out[weights] = {"teacher_rule_end": teacher_eval(s, items, seed=seed, check=CHECK)["sampled_rule_rate"],
                        "rule_before": before["sampled_rule_rate"], "rule_after": after["sampled_rule_rate"],
                        "acc_before": before["sampled_accuracy"], "acc_after": after["sampled_accuracy"]}
    return out


def describe_c12(results: list[dict]) -> str:
    return (f"the initial teacher's sampled rule rate with the rule {fmt([r['teacher_rule_start'] for r in results])}; "
            + "; ".join(f"{w}: held-out sampled rule rate {fmt([r[w]['rule_before'] for r in results])} -> "
                        f"{fmt([r[w]['rule_after'] for r in results])} (its teacher at the end "
                        f"{fmt([r[w]['teacher_rule_end'] for r in results])}), accuracy "
                        f"{fmt([r[w]['acc_before'] for r in results])} -> {fmt([r[w]['acc_after'] for r in results])}"
                        for w in SELF_WEIGHTS))
