"""The worker side: one cell measured (timing, step, FLOPs, roofline, environment)."""
