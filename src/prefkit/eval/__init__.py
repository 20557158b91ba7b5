"""Evaluation: metrics, scorers and the HTML report."""
