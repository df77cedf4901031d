"""opdkit: on-policy distillation that does not collapse.

Every token-level distillation objective behind one API (`opdkit.objectives`), the
log-probability plumbing that keeps (N, T, V) logits out of memory (`opdkit.objectives.logprobs`),
and a lab that shows the paper's mechanisms on a CPU (`opdkit.lab`).
"""
from opdkit.objectives import OBJECTIVES, group_advantages, make_objective
from opdkit.objectives.scores import ObjectiveInputs, ObjectiveOutput, TeacherScores

__all__ = ["OBJECTIVES", "make_objective", "group_advantages", "ObjectiveInputs", "ObjectiveOutput",
           "TeacherScores"]
__version__ = "0.1.0"
