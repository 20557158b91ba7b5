"""Engines for the record-wise stages: ``local`` (this process) and ``ray`` (Ray Data)."""

ENGINES = ("local", "ray")
"""The values of ``--engine``."""
