"""litellm_pglog: request/response logging of the LiteLLM proxy into PostgreSQL.

Modules:
  config     PGLOG_* environment -> Settings
  events     `event=<name> <json>` log lines
  models     SQLAlchemy 2.0 models (the schema, every column documented)
  engine     engine/pool construction, the `event=connect` line, pool statistics
  records    standard_logging_object -> plain, JSONB-safe row dicts
  spool      fsync'd on-disk spool segments shared by several processes
  writer     the writer thread: wiring, online/offline, replay, shutdown drain
  batcher    the hand-off queue from the event loop; batches by size and age
  delivery   the one delivery policy (retry connection errors, bisect refused rows)
  insert     one batch -> ONE statement for both tables, keyed on (created_at, event_id)
  outbox     where undelivered records wait: spool, then memory bound, then counted drops
  dberrors   "database away" vs "data refused"
  stats      counter names and the atomic stats file
  callback   the LiteLLM CustomLogger (`proxy_handler_instance`)
  auth       keys and the route allow-list; custom_auth for the proxy (401 / 403)
  guard      ASGI middleware in front of LiteLLM's app: key + allow-list on every route,
             body size / JSON depth / value count / non-finite numbers bounded before
             parsing, internal response headers dropped, client hang-ups noted
  schema     Alembic upgrade, grants, revision check
  evidence   SQL of the evidence commands
  cli        `litellm-pglog`
"""

__version__ = "0.1.0"
