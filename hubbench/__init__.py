"""hubbench: honest throughput, scaling and causality numbers for HubRouter and its baselines."""

__version__ = "0.1.0"
