"""Which objects the 10 s recheck timer reconciles: those waiting for an unwatched Secret or claim, and
those whose status is behind their spec (a change lost while two peered replicas started at once)."""

import pytest
from kubernetes import client, config
from pixtral_operator import k8s
from pixtral_operator.handlers.pixtral import behind_its_spec, waits_for_a_reference


def obj(generation, observed=None, conditions=()):
    status = {"conditions": list(conditions)}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"generation": generation}, "status": status}


@pytest.mark.parametrize("body, behind", [
    ({"metadata": {"generation": 1}}, True),  # never reconciled
    (obj(1), True),
    (obj(2, observed=1), True),  # a spec change not handled yet
    (obj(2, observed=2), False),
])
def test_behind_its_spec(body, behind):
    assert behind_its_spec(body) is behind


def test_waits_for_a_reference_only_for_unwatched_kinds():
    degraded = {"type": "Degraded", "status": "True"}
    assert waits_for_a_reference(obj(1, 1, [{**degraded, "reason": "SecretNotFound"}])["status"])
    assert waits_for_a_reference(obj(1, 1, [{**degraded, "reason": "PersistentVolumeClaimNotFound"}])["status"])
    assert not waits_for_a_reference(obj(1, 1, [{**degraded, "reason": "InvalidSpec"}])["status"])
    assert not waits_for_a_reference(obj(1, 1, [{**degraded, "status": "False", "reason": "SecretNotFound"}])["status"])


def test_the_api_connection_pool_holds_every_thread(monkeypatch):
    monkeypatch.setattr(config, "load_incluster_config", lambda: None)
    before = client.Configuration.get_default_copy()
    try:
        k8s.load_config(connections=32)
        assert client.Configuration.get_default_copy().connection_pool_maxsize >= 32
        k8s.load_config(connections=1)  # never below the client's own default
        assert client.Configuration.get_default_copy().connection_pool_maxsize >= before.connection_pool_maxsize
    finally:
        client.Configuration.set_default(before)
