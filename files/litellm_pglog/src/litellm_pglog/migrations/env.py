"""Alembic environment of litellm_pglog.

The connection comes from `config.attributes["connection"]` (schema.upgrade passes the owner's
connection) or else from the PGLOG_* environment, so `alembic` needs no ini file and works from
the installed package (script_location = "litellm_pglog:migrations").
"""

from alembic import context

from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine, url
from litellm_pglog.models import Base, is_partition

config = context.config
target_metadata = Base.metadata


def include_name(name, type_, parent_names):  # noqa: ANN001, ANN201 -- alembic's hook signature
    """autogenerate: the day partitions are pg_partman's, not the model's."""
    return not (type_ == "table" and is_partition(name))


def run_offline() -> None:
    context.configure(url=url(Settings.from_env()), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(Settings.from_env(), log_connect=False)
    try:
        with engine.connect() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, include_name=include_name)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
