"""Correctness checks of a model: causality and decode equivalence."""
