"""Multi-stage recipes: stages with hand-offs, switch criteria and the length curriculum.
"""
