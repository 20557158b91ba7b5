"""Curation: near-duplicates, benchmark contamination, label noise and data selection.

- :mod:`prefkit.curate.dedup`: exact, MinHash-LSH and embedding (SemDeDup) duplicates.
- :mod:`prefkit.curate.decontaminate`: token n-gram overlap with evaluation sets.
- :mod:`prefkit.curate.noise`: pairs whose label out-of-fold reward models contradict.
- :mod:`prefkit.curate.select`: DSIR, ZIP-FIT and perplexity selection toward a target.

Each works on canonical records, counts what it read, kept and dropped (with the
reason), and is deterministic for a given seed. Nothing here is imported by
``import prefkit``.
"""
