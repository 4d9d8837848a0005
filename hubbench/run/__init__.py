"""The parent side of a run: the runner, its worker handle, executors, progress."""
