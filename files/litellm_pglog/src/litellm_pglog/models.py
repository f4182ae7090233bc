"""The schema: two tables, one row each per LiteLLM call. This docstring is the column reference.

requests (11 columns) -- one row per LiteLLM call, written together with its response row
  id            BIGINT identity, primary key
  call_id       VARCHAR(64) UNIQUE NOT NULL -- LiteLLM's call id (kwargs["litellm_call_id"], the
                x-litellm-call-id response header; standard_logging_object["id"] only as fallback,
                since in 1.108.7 that is the provider's response id on success);
                the dedupe key: a second delivery of the same call is counted, not inserted
  created_at    TIMESTAMPTZ NOT NULL, indexed -- request start (startTime)
  logged_at     TIMESTAMPTZ NOT NULL DEFAULT now() -- when the row was written;
                logging delay = logged_at - responses.created_at
  model         VARCHAR(255) NOT NULL, indexed -- requested model group, '' when unknown
  call_type     VARCHAR(64) NOT NULL -- e.g. 'acompletion'
  stream        BOOLEAN NOT NULL
  api_key_hash  VARCHAR(64) NOT NULL -- sha256 hex of the caller's key, never the key ('' if none)
  end_user      VARCHAR(255) NULL -- the request's `user`, if any
  tags          JSONB NOT NULL -- array, LiteLLM's request_tags (body `metadata.tags`), GIN-indexed
  payload       JSONB NOT NULL -- {"messages": ..., "model_parameters": ...}; larger than
                PGLOG_MAX_PAYLOAD_BYTES -> {"_truncated": true, "original_bytes", "sha256", "head"}

responses (10 columns) -- exactly one per request row
  id                 BIGINT identity, primary key
  request_id         BIGINT NOT NULL UNIQUE, FK requests.id ON DELETE CASCADE, indexed
  created_at         TIMESTAMPTZ NOT NULL, indexed -- response end (endTime)
  status             VARCHAR(16) NOT NULL -- 'success' | 'failure'
  prompt_tokens      INTEGER NOT NULL
  completion_tokens  INTEGER NOT NULL
  total_tokens       INTEGER NOT NULL
  cost_usd           NUMERIC(18, 10) NOT NULL -- LiteLLM's response_cost (0 on failure)
  latency_ms         DOUBLE PRECISION NOT NULL -- endTime - startTime
  body               JSONB NOT NULL -- the response on success; {"error": {...error_information,
                     "message": error_str}} on failure; truncated like payload

Text going into JSONB/VARCHAR has U+0000 replaced by the six characters `\\u0000` (PostgreSQL
rejects NUL in text and jsonb); see records.py.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    call_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    logged_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    model: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    call_type: Mapped[str] = mapped_column(String(64), nullable=False)
    stream: Mapped[bool] = mapped_column(Boolean, nullable=False)
    api_key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    end_user: Mapped[str | None] = mapped_column(String(255), nullable=True)
    tags: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)

    response: Mapped["Response | None"] = relationship(back_populates="request", passive_deletes=True)

    __table_args__ = (Index("ix_requests_tags", "tags", postgresql_using="gin"),)


class Response(Base):
    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("requests.id", ondelete="CASCADE"),
        unique=True,
        index=True,
        nullable=False,
    )
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False, index=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    completion_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    total_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(18, 10), nullable=False)
    latency_ms: Mapped[float] = mapped_column(Double, nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)

    request: Mapped[Request] = relationship(back_populates="response")


REQUEST_COLUMNS = (
    "call_id", "created_at", "model", "call_type", "stream",
    "api_key_hash", "end_user", "tags", "payload",
)
RESPONSE_COLUMNS = (
    "request_id", "created_at", "status", "prompt_tokens", "completion_tokens",
    "total_tokens", "cost_usd", "latency_ms", "body",
)
