"""Models and what runs them: loading and the pair preflight, rollouts (HF, vLLM), the student and teacher
forward passes, teachers (local and served), checkpoint files.
"""
