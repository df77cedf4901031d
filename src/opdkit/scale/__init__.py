"""One to many processes and what they cost: torch.distributed (DDP, FSDP2), host memory, phase timers,
the paper memory/time model.
"""
