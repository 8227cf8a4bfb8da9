"""Stored datasets; jobs read data by reference (dataset or URI, evaluation data, options) and keep
further downloads (weights alone, the model before recovery).

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("source_uri", sa.String(length=4096), nullable=True),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=True),
        sa.Column("splits", sa.JSON(), nullable=False),
        sa.Column("labelled", sa.Boolean(), nullable=False),
        sa.Column("preprocess", sa.JSON(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_datasets_tenant_seq", "datasets", ["tenant_id", "seq"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("dataset_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("dataset_uri", sa.String(length=4096), nullable=True))
        batch.add_column(sa.Column("eval_dataset_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("eval_dataset_uri", sa.String(length=4096), nullable=True))
        batch.add_column(sa.Column("data_options", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            "fk_jobs_dataset_id_datasets", "datasets", ["dataset_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_foreign_key(
            "fk_jobs_eval_dataset_id_datasets", "datasets", ["eval_dataset_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_jobs_dataset_id", ["dataset_id"])
        batch.create_index("ix_jobs_eval_dataset_id", ["eval_dataset_id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_eval_dataset_id")
        batch.drop_index("ix_jobs_dataset_id")
        batch.drop_constraint("fk_jobs_eval_dataset_id_datasets", type_="foreignkey")
        batch.drop_constraint("fk_jobs_dataset_id_datasets", type_="foreignkey")
        batch.drop_column("artifacts")
        batch.drop_column("data_options")
        batch.drop_column("eval_dataset_uri")
        batch.drop_column("eval_dataset_id")
        batch.drop_column("dataset_uri")
        batch.drop_column("dataset_id")
    op.drop_index("ix_datasets_tenant_seq", table_name="datasets")
    op.drop_table("datasets")
