"""The annotation web app: storage, assignment, agreement, pages.

People compare, rank, rate or thumb responses in a browser; every vote is kept
and exported as canonical records that ``prefkit rm train`` reads directly.

- :mod:`prefkit.annotate.config`: project and server settings (dataclasses).
- :mod:`prefkit.annotate.tasks`: what an item is per task, answers, export records.
- :mod:`prefkit.annotate.store`: the database (SQLAlchemy 2 + Alembic; SQLite or PostgreSQL).
- :mod:`prefkit.annotate.assign`: leases with overlap, skip, undo, submissions.
- :mod:`prefkit.annotate.priority`: the order items are offered in (random or uncertainty).
- :mod:`prefkit.annotate.agreement`: Krippendorff's alpha and Fleiss' kappa (pure numpy).
- :mod:`prefkit.annotate.project`: creating projects and annotators, status, export.
- :mod:`prefkit.annotate.web`: the server (Starlette + uvicorn), its pages and security.

Only :mod:`~prefkit.annotate.agreement`, :mod:`~prefkit.annotate.config` and
:mod:`~prefkit.annotate.tasks` import without the ``annotate`` extra.
"""
