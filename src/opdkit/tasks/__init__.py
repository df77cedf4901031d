"""Prompts and answers: JSONL data and chat rendering, verifiable rewards and rule checks, procedural tasks.
"""
