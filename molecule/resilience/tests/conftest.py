"""The resilience scenario reuses the default scenario's helpers (molecule/default/tests/
conftest.py): loaded under another module name, since this file is itself `conftest`."""

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "default" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("default_bed_conftest", _path)
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

hosts_in = _shared.hosts_in
inventory_vars = _shared.inventory_vars
podman_hosts_in = _shared.podman_hosts_in
