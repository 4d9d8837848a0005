"""The quality mode: tasks, training, evaluation and routing precision (docs/quality.md)."""
