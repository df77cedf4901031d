"""The objectives layer: every token-level distillation objective, as pure torch.

    from opdkit.objectives import make_objective, ObjectiveInputs, TeacherScores, token_mean

- losses.py     every objective as a small function, the OBJECTIVES table, what each needs from its teacher
- capabilities.py  what follows from the table: teacher and prefix-source refusals, `opdkit objectives`' text
- scores.py     TeacherScores (a local teacher's lazily, as a Head), ObjectiveInputs, ObjectiveOutput, shape checks
- topk.py       top-K supports and the four normalisations of top-K reverse KL, overlap metrics
- logprobs.py   selective log-softmax and the chunked path that never holds (N, T, V) logits
- reduction.py  one token mean over the whole optimizer step

Nothing here imports anything but torch (tests/test_hygiene.py checks it).
"""
from opdkit.objectives.capabilities import (
    describe,
    needs_teacher,
    prefix_problem,
    teacher_mismatch,
    teacher_needs,
    teacher_prefix_objectives,
)
from opdkit.objectives.losses import (
                                      FULL,
                                      FULL_SUPPORTS,
                                      NO_TEACHER,
                                      OBJECTIVES,
                                      OPTION_CHOICES,
                                      TOP_K,
                                      ObjectiveSpec,
                                      accepted_options,
                                      fkl,
                                      group_advantages,
                                      grpo,
                                      jsd,
                                      jsd_norm,
                                      kl_mix,
                                      make_objective,
                                      policy_gradient_loss,
                                      rkl,
                                      sampled_rkl,
                                      sft,
                                      teacher_logprob_of_sampled,
                                      topk_fkl_teacher,
                                      topk_rkl,
                                      topk_teacher_objectives,
)
from opdkit.objectives.reduction import token_mean, token_weights
from opdkit.objectives.scores import Head, ObjectiveInputs, ObjectiveOutput, TeacherScores

__all__ = ["FULL", "FULL_SUPPORTS", "NO_TEACHER", "OBJECTIVES", "OPTION_CHOICES", "TOP_K", "ObjectiveSpec",
           "accepted_options", "describe", "fkl", "group_advantages", "grpo", "jsd", "jsd_norm", "kl_mix",
           "make_objective", "needs_teacher", "policy_gradient_loss", "rkl", "sampled_rkl", "sft",
           "teacher_logprob_of_sampled", "teacher_mismatch", "teacher_needs", "topk_fkl_teacher", "topk_rkl",
           "topk_teacher_objectives", "prefix_problem",
           "teacher_prefix_objectives", "token_mean", "token_weights", "Head", "ObjectiveInputs", "ObjectiveOutput",
           "TeacherScores"]
