"""A run: config, session, the optimizer step, the loop with its run state, checkpoints and guard,
evaluation, metrics, export.
"""
