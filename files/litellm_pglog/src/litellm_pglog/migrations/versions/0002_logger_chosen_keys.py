"""the logger chooses the unique key; a caller's call id is searchable, not unique

- requests.event_id UUID NOT NULL: existing rows get the id records.legacy_event_id() derives
  from their call_id (unique until now, so the derived ids are unique too), so a spool segment
  written by the previous release replays onto the same rows instead of duplicating them;
- UNIQUE (created_at, event_id) replaces UNIQUE (call_id) as the dedupe key (it contains the
  event time, as a time-partitioned table will need);
- requests.call_id widened to VARCHAR(256) (LiteLLM accepts caller call ids that long) and
  indexed without uniqueness;
- requests.api_key_hash VARCHAR(80), every non-empty value re-hashed with records.key_hash()
  ('h1:' + sha256(label || old value)). The old value was sha256(key) for accepted keys (the
  new code stores key_hash(sha256(key)) for them too, so a key's old and new rows agree) or,
  the bug this fixes, a raw 64-hex key, which is hashed now. Nothing is left unprefixed;
- responses.status VARCHAR(32), for 'client_disconnected'.

Existing rows are kept. Runs in the migrate transaction, under its advisory lock.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# records.LEGACY_EVENT_ID_LABEL: the first 128 bits of sha256(label || call_id), as a uuid.
# Written out here: a migration must not change when the package's code does.
_LEGACY_LABEL = "litellm_pglog/legacy_event_id/v1:"
# records.KEY_HASH_PREFIX / KEY_HASH_LABEL
_KEY_PREFIX = "h1:"
_KEY_LABEL = "litellm_pglog/api_key_hash/v1:"


def upgrade() -> None:
    op.add_column("requests", sa.Column("event_id", postgresql.UUID(as_uuid=False), nullable=True))
    op.execute(
        sa.text(
            "UPDATE requests SET event_id = CAST(substr(encode(sha256(convert_to(:label || call_id, 'UTF8')),"
            " 'hex'), 1, 32) AS uuid) WHERE event_id IS NULL"
        ).bindparams(label=_LEGACY_LABEL)
    )
    op.alter_column("requests", "event_id", nullable=False)
    op.drop_constraint("uq_requests_call_id", "requests", type_="unique")
    op.alter_column("requests", "call_id", type_=sa.String(256), existing_nullable=False)
    op.create_index("ix_requests_call_id", "requests", ["call_id"])
    op.create_unique_constraint("uq_requests_created_at_event_id", "requests", ["created_at", "event_id"])
    op.alter_column("requests", "api_key_hash", type_=sa.String(80), existing_nullable=False)
    op.execute(
        sa.text(
            "UPDATE requests SET api_key_hash = :prefix || encode(sha256(convert_to(:label || api_key_hash, 'UTF8')),"
            " 'hex') WHERE api_key_hash <> ''"
        ).bindparams(prefix=_KEY_PREFIX, label=_KEY_LABEL)
    )
    op.alter_column("responses", "status", type_=sa.String(32), existing_nullable=False)


def downgrade() -> None:
    # Only possible while no call id is used twice and every call id fits 64 characters again.
    # Key hashes stay in the new format (a hash cannot be undone); the column keeps its width.
    # responses.status keeps its width too ('client_disconnected' rows would not fit 16).
    op.drop_constraint("uq_requests_created_at_event_id", "requests", type_="unique")
    op.drop_index("ix_requests_call_id", "requests")
    op.alter_column("requests", "call_id", type_=sa.String(64), existing_nullable=False)
    op.create_unique_constraint("uq_requests_call_id", "requests", ["call_id"])
    op.drop_column("requests", "event_id")
