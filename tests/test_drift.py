"""drift.covers: the live projection of the fields the operator renders."""

import pytest
from pixtral_operator.drift import controlled_by, covers, replicas_managers


@pytest.mark.parametrize(
    ("desired", "live", "expected"),
    [
        ({"a": 1}, {"a": 1, "added": "by the server"}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": {"b": "x"}}, {"a": {"b": "x", "c": 1}}, True),
        ({"a": {"b": "x"}}, {"a": {}}, False),
        ({"env": [{"name": "A", "value": "1"}]}, {"env": [{"name": "A", "value": "1"}, {"name": "B"}]}, False),
        ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
         {"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP", "apiVersion": "v1"}}}]}, True),
        ({"publishNotReadyAddresses": False}, {}, True),  # omitted by the API server as a zero value
        ({"publishNotReadyAddresses": False}, {"publishNotReadyAddresses": True}, False),
        ({"replicas": 0}, {}, True),
        ({"replicas": 2}, {}, False),
        ({"flag": True}, {"flag": 1}, False),  # a bool is not a number
        ({"n": 1}, {"n": True}, False),
        ({"data": {"config.json": "{}"}}, {"data": {"config.json": "{ }"}}, False),
    ],
)
def test_covers(desired, live, expected):
    assert covers(desired, live) is expected


def test_controlled_by_needs_the_controller_reference_with_the_uid():
    ref = {"uid": "u1", "controller": True}
    assert controlled_by({"metadata": {"ownerReferences": [ref]}}, "u1")
    assert not controlled_by({"metadata": {"ownerReferences": [{**ref, "controller": False}]}}, "u1")
    assert not controlled_by({"metadata": {"ownerReferences": [ref]}}, "u2")
    assert not controlled_by({"metadata": {}}, "u1")


def test_replicas_managers_reads_managed_fields():
    live = {"metadata": {"managedFields": [
        {"manager": "pixtral-operator", "operation": "Apply", "fieldsV1": {"f:spec": {"f:template": {}}}},
        {"manager": "pixtral-autoscaler", "operation": "Update", "subresource": "scale",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}},
    ]}}
    assert replicas_managers(live) == {"pixtral-autoscaler"}
