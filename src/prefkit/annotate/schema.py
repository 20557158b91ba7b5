"""The database tables (SQLAlchemy Core); Alembic migrations create and change them.

Times are seconds since the epoch (floats), the same on SQLite and PostgreSQL.
``items.n_taken`` counts the slots an item has given out (open leases plus
answers): taking a slot is one conditional ``UPDATE ... WHERE n_taken < overlap``,
which the database applies atomically, so concurrent requests can never push an
item past its overlap. ``assignments`` is unique per (item, annotator), so no one
gets an item twice, and ``answers`` is unique per assignment, so a resubmitted
form stores one answer.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

LEASED, DONE, SKIPPED, EXPIRED = "leased", "done", "skipped", "expired"

projects = Table(
    "projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("task", String(16), nullable=False),
    Column("config", JSON, nullable=False),
    Column("guidelines", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
)

items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("external_id", String(512), nullable=False),
    Column("content", JSON, nullable=False),
    Column("priority", Float, nullable=False),
    Column("model_margin", Float, nullable=True),
    Column("is_gold", Boolean, nullable=False, default=False),
    Column("gold_answer", JSON, nullable=True),
    Column("n_taken", Integer, nullable=False, default=0),
    Column("n_done", Integer, nullable=False, default=0),
    UniqueConstraint("project_id", "external_id", name="uq_items_project_external"),
    Index("ix_items_next", "project_id", "is_gold", "priority"),
    Index("ix_items_open", "project_id", "is_gold", "n_taken"),
)

annotators = Table(
    "annotators",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_annotators_project_name"),
)

assignments = Table(
    "assignments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", Integer, ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column(
        "annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False
    ),
    Column("state", String(8), nullable=False),
    Column("display_order", JSON, nullable=False),
    Column("leased_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("shown_at", Float, nullable=True),
    Column("draft", JSON, nullable=True),
    UniqueConstraint("item_id", "annotator_id", name="uq_assignments_item_annotator"),
    Index("ix_assignments_annotator_state", "annotator_id", "state"),
    Index("ix_assignments_expiry", "project_id", "state", "expires_at"),
)

answers = Table(
    "answers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "assignment_id",
        Integer,
        ForeignKey("assignments.id", ondelete="CASCADE"),
        nullable=False,
        unique=True,
    ),
    Column("project_id", Integer, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("item_id", Integer, ForeignKey("items.id", ondelete="CASCADE"), nullable=False),
    Column(
        "annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False
    ),
    Column("value", JSON, nullable=False),
    Column("rationale", Text, nullable=True),
    Column("seconds", Float, nullable=True),
    Column("server_seconds", Float, nullable=True),
    Column("submitted_at", Float, nullable=False),
    Index("ix_answers_project_item", "project_id", "item_id"),
    Index("ix_answers_annotator_time", "annotator_id", "submitted_at"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column(
        "annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False
    ),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
