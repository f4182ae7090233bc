"""cluster_state.json (write_evidence.py): where the database evidence was read and, on the
HA topology, the cluster as Patroni lists it. Rendered from what validate.yml collects."""

import json

import write_evidence


def cmdres(stdout: str = "", rc: int = 0, stderr: str = "") -> dict:
    return {"cmd": ["patronictl"], "rc": rc, "stdout": stdout, "stderr": stderr}


MEMBERS = [{"Cluster": "pglog", "Member": "db1", "Host": "10.0.0.19", "Role": "Leader", "State": "running", "TL": 3},
           {"Cluster": "pglog", "Member": "db2", "Host": "10.0.0.20", "Role": "Sync Standby",
            "State": "streaming", "TL": 3, "Lag in MB": 0}]
REPLICATION = [{"application_name": "db2", "client_addr": "10.0.0.20", "state": "streaming",
                "sync_state": "sync", "replay_lag_bytes": 0, "replay_lag_s": 0.001, "timeline": 3}]


def test_single_server_names_the_host_the_evidence_was_read_on():
    out = write_evidence.cluster_state({"ha": False, "primary": "db", "nodes": [
        {"host": "db", "is_primary": True, "patroni_list": None, "replication": []}]})
    assert out == {"topology": "single server", "evidence_read_on": "db", "servers": {"db": "primary"}}


def test_ha_lists_members_roles_timeline_and_lag_from_patroni_and_the_primary():
    out = write_evidence.cluster_state({"ha": True, "primary": "db2", "nodes": [
        {"host": "db1", "is_primary": False, "patroni_list": cmdres(json.dumps(MEMBERS)), "replication": None},
        {"host": "db2", "is_primary": True, "patroni_list": cmdres(json.dumps(MEMBERS)), "replication": REPLICATION}]})
    assert out["topology"] == "patroni" and out["evidence_read_on"] == "db2"
    assert out["servers"] == {"db1": "replica", "db2": "primary"}
    assert out["patroni_members"] == MEMBERS
    assert out["replication"] == REPLICATION and "patroni_errors" not in out


def test_ha_without_an_answer_from_patroni_says_why_instead_of_guessing():
    out = write_evidence.cluster_state({"ha": True, "primary": None, "nodes": [
        {"host": "db1", "is_primary": False, "patroni_list": cmdres(rc=1, stderr="etcd unreachable"),
         "replication": None}]})
    assert out["patroni_members"] is None and out["evidence_read_on"] is None
    assert out["patroni_errors"] == ["db1: rc=1 etcd unreachable"]
    assert out["replication"] is None


def test_nothing_collected_still_renders_a_file():
    assert write_evidence.cluster_state(None) == {"topology": "single server", "evidence_read_on": None,
                                                  "servers": {}}
