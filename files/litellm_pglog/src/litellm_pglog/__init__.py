"""litellm_pglog: request/response logging of the LiteLLM proxy into PostgreSQL.

Modules:
  config     PGLOG_* environment -> Settings
  events     `event=<name> <json>` log lines
  models     SQLAlchemy 2.0 models (the schema, every column documented)
  engine     engine/pool construction, the `event=connect` line, pool statistics
  records    standard_logging_object -> plain, JSONB-safe row dicts
  spool      fsync'd on-disk spool segments shared by several processes
  writer     background writer thread: batching, fast INSERTs, retry, spool, drain
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
