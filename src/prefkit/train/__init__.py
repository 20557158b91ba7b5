"""Shared training loop."""
