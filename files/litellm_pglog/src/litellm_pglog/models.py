"""The schema: two tables, one row each per LiteLLM call. This docstring is the column reference.

Both tables are range-partitioned by day (revision 0005; pg_partman 5 makes the days ahead and
drops whole days behind, see pglog_partitions_configure): a partition per UTC day named
<table>_pYYYYMMDD plus <table>_default for rows of a day that has no partition. What the
partitioning changed from the POC's schema: the primary keys carry the partition key, the response
carries its request's created_at, and the foreign key is one per day (below).

requests (12 columns) -- one row per logged event (one per LiteLLM call), written together with
its response row; PARTITION BY RANGE (created_at)
  id            BIGINT identity; primary key (id, created_at) -- a partitioned table's unique keys
                must hold the partition key; ids come from one sequence, so id alone is unique too
  call_id       VARCHAR(256) NOT NULL, indexed, NOT unique -- LiteLLM's call id
                (kwargs["litellm_call_id"], the x-litellm-call-id response header;
                standard_logging_object["id"] only as fallback, since in 1.108.7 that is the
                provider's response id on success). A caller may choose it (x-litellm-call-id,
                up to 256 characters): searchable, never the dedupe key. Values that do not fit
                or are not clean text are stored as `<head>~sha256:<hex>` (records.ident), so
                two different call ids never become equal.
  created_at    TIMESTAMPTZ NOT NULL, the partition key -- the event time: request start (startTime), or
                the hand-off time when LiteLLM gave none; fixed in the record at hand-off
  logged_at     TIMESTAMPTZ NOT NULL DEFAULT now() -- when the row was written;
                logging delay = logged_at - responses.created_at
  model         VARCHAR(255) NOT NULL, indexed -- requested model group, '' when unknown
  call_type     VARCHAR(64) NOT NULL -- e.g. 'acompletion'
  stream        BOOLEAN NOT NULL
  api_key_hash  VARCHAR(80) NOT NULL -- 'h1:' + sha256('litellm_pglog/api_key_hash/v1:' + K), where
                K is what LiteLLM reports as the key: sha256 hex of the key for keys custom_auth
                accepted (records.stored_key_hash(key) gives the value), whatever the caller sent
                for refused ones. Hashed unconditionally, never the key; '' if no key. Rows
                written before 0002 held sha256(key) (or, the bug, a raw 64-hex key): 0002
                re-hashed them with the same function, so old and new rows of a key agree.
  end_user      VARCHAR(255) NULL -- the request's `user`, if any
  tags          JSONB NOT NULL -- array, LiteLLM's request_tags (body `metadata.tags`), GIN-indexed
  payload       JSONB NOT NULL -- {"messages": ..., "model_parameters": ...}; larger than
                PGLOG_MAX_PAYLOAD_BYTES -> {"_truncated": true, "original_bytes", "sha256", "head"}
  event_id      UUID NOT NULL -- chosen by the logger when the callback hands the event off
                (128 random bits), kept in the record so spool replays are idempotent;
                rows from before revision 0002 got one derived from their then-unique call_id
                (records.legacy_event_id)
  UNIQUE (created_at, event_id) -- the dedupe key: a second delivery of the same record (a spool
                replay after a crash between COMMIT and unlink) is counted, not inserted. It
                carries the event time so it stays valid when the table is partitioned by time.

responses (12 columns) -- exactly one per request row; PARTITION BY RANGE (request_created_at), so
a call's response lies in the same day as its request and retention drops both together
  id                 BIGINT identity; primary key (id, request_created_at)
  request_id         BIGINT NOT NULL; UNIQUE (request_id, request_created_at): one response per
                     request. Referential integrity per day: each responses partition has a
                     FOREIGN KEY (request_id, request_created_at) -> its twin requests partition
                     (id, created_at) ON DELETE CASCADE (pglog_partition_link()). One key between
                     the parents would be checked through the partitioned table: ~31 us more per
                     row on PostgreSQL 17, and it would make dropping a day scan the other table.
  request_created_at TIMESTAMPTZ NOT NULL, the partition key -- the request's created_at, copied
                     by the insert statement
  created_at         TIMESTAMPTZ NOT NULL, indexed -- response end (endTime)
  status             VARCHAR(32) NOT NULL -- 'success' | 'failure' | 'client_disconnected' (the
                     caller hung up before its answer was complete: LiteLLM's own 499 on a stream,
                     or the request guard saw it leave during a non-streaming call; never counted
                     as a clean success)
  prompt_tokens      INTEGER NOT NULL
  completion_tokens  INTEGER NOT NULL
  total_tokens       INTEGER NOT NULL
  cost_usd           NUMERIC(18, 10) NOT NULL -- LiteLLM's response_cost (0 on failure). For
                     client_disconnected: a stream cut short carries LiteLLM's estimate of what
                     the provider billed (prompt counted by LiteLLM + the chunks received; the
                     provider's usage report never arrived); a non-streaming call the provider's
                     own usage (the provider finished the answer nobody received). Tokens alike.
  latency_ms         DOUBLE PRECISION NOT NULL -- endTime - startTime
  ttft_ms            DOUBLE PRECISION NULL -- streaming calls: time to the first chunk
                     (LiteLLM's completionStartTime - startTime); NULL for non-streaming calls,
                     failed calls and rows written before revision 0003
  body               JSONB NOT NULL -- the response on success; {"error": {...error_information,
                     "message": error_str}} on failure; for client_disconnected {"error": {...499},
                     "response": what LiteLLM assembled (the partial stream / the undelivered
                     answer), "delivery": {client_disconnected, disconnected_after_ms,
                     response_started, response_status, response_complete, body_bytes_sent}};
                     a call the guard refused: failure with error_code 401/403/400/413, and the
                     request row's payload {"refused_request": {method, path, body_bytes,
                     body_head}}; truncated like payload

model, call_type and end_user are stored like call_id (verbatim, or `<head>~sha256:<hex>`).
Text going into JSONB has U+0000 replaced by the six characters `\\u0000` (PostgreSQL
rejects NUL in text and jsonb); see records.py.
"""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    CheckConstraint,
    PrimaryKeyConstraint,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    call_id: Mapped[str] = mapped_column(String(256), nullable=False, index=True)
    # the partition key; range scans use uq_requests_created_at_event_id (it starts with it)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, primary_key=True)
    logged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), index=True  # rollup refresh (0004)
    )
    model: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    call_type: Mapped[str] = mapped_column(String(64), nullable=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False)
    api_key_hash: Mapped[str] = mapped_column(String(80), nullable=False)
    end_user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    event_id: Mapped[str] = mapped_column(UUID(as_uuid=False), nullable=False)

    # no parent-level foreign key (see the docstring): the join is spelled out
    response: Mapped["Response | None"] = relationship(
        back_populates="request", passive_deletes=True,
        primaryjoin="and_(Request.id == foreign(Response.request_id),"
                    " Request.created_at == foreign(Response.request_created_at))")

    __table_args__ = (
        PrimaryKeyConstraint("id", "created_at", name="requests_pkey"),
        Index("ix_requests_tags", "tags", postgresql_using="gin"),
        UniqueConstraint("created_at", "event_id", name="uq_requests_created_at_event_id"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


class Response(Base):
    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    request_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False,
                                                            primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(32), nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 10), nullable=False)
    latency_ms: Mapped[float] = mapped_column(Double, nullable=False)
    ttft_ms: Mapped[float | None] = mapped_column(Double, nullable=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)

    request: Mapped[Request] = relationship(
        back_populates="response",
        primaryjoin="and_(Request.id == foreign(Response.request_id),"
                    " Request.created_at == foreign(Response.request_created_at))")

    __table_args__ = (
        PrimaryKeyConstraint("id", "request_created_at", name="responses_pkey"),
        Index("ix_responses_request_id", "request_id", "request_created_at", unique=True),
        {"postgresql_partition_by": "RANGE (request_created_at)"},
    )


def is_partition(name: str | None) -> bool:
    """A day or DEFAULT partition of requests/responses (pg_partman's and migration 0005's names):
    not a table of the model, so schema comparisons leave them out."""
    return bool(name) and re.fullmatch(r"(requests|responses)_(p\d{8}|default)", name) is not None


class _UsageTotals:
    """What both rollup levels hold per group. Histograms are sparse: the non-empty buckets,
    ascending (bucket i = [2^(i/3), 2^((i+1)/3)) ms, 64 buckets), and their counts (0006)."""

    api_key_hash: Mapped[str] = mapped_column(String(80), primary_key=True)
    end_user: Mapped[str] = mapped_column(String(255), primary_key=True)  # '' when none
    model: Mapped[str] = mapped_column(String(255), primary_key=True)
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    total_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(24, 10), nullable=False)
    latency_ms_sum: Mapped[float] = mapped_column(Double, nullable=False)
    latency_buckets: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), nullable=False)
    latency_counts: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)
    ttft_calls: Mapped[int] = mapped_column(BigInteger, nullable=False)  # streams with a first chunk
    ttft_buckets: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), nullable=False)
    ttft_counts: Mapped[list[int]] = mapped_column(ARRAY(Integer), nullable=False)


class UsageHourly(_UsageTotals, Base):
    """The hourly usage rollup (maintained by pglog_rollup_refresh(); read by `litellm-pglog
    report` for the hours before the window's first whole day, and by groupings by hour)."""

    __tablename__ = "usage_hourly"

    hour: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)  # UTC hour of the request

    __table_args__ = (PrimaryKeyConstraint("hour", "api_key_hash", "end_user", "model", "status",
                                           name="pk_usage_hourly"),)


class UsageDailyRollup(_UsageTotals, Base):
    """The daily level (0006), recomputed from usage_hourly for the days the refresh touched;
    reports read whole days here; the usage_daily view (BI tools) reads it."""

    __tablename__ = "usage_daily_rollup"

    day: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)  # UTC midnight

    __table_args__ = (PrimaryKeyConstraint("day", "api_key_hash", "end_user", "model", "status",
                                           name="pk_usage_daily_rollup"),)


class UsageRollupState(Base):
    """One row: how far (requests.logged_at) the rollup has read."""

    __tablename__ = "usage_rollup_state"

    id: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    logged_through: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    refreshed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)

    __table_args__ = (CheckConstraint("id", name="usage_rollup_state_id_check"),)


REQUEST_COLUMNS = (
    "event_id", "call_id", "created_at", "model", "call_type", "stream",
    "api_key_hash", "end_user", "tags", "payload",
)
# request_id and request_created_at come from the request row the same statement inserts
RESPONSE_COLUMNS = (
    "request_id", "request_created_at", "created_at", "status", "prompt_tokens", "completion_tokens",
    "total_tokens", "cost_usd", "latency_ms", "ttft_ms", "body",
)
