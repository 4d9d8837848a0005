"""Profile the one step: torch.profiler traces and where the time goes."""
