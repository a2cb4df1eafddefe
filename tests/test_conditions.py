from pixtral_operator.conditions import Condition, merge, transitions


def test_merge_keeps_transition_time_when_status_unchanged():
    first = merge(None, [Condition("Ready", False, "RuntimeNotReady", "0/1")], generation=1, now="t0")
    assert first == [
        {"type": "Ready", "status": "False", "reason": "RuntimeNotReady", "message": "0/1", "lastTransitionTime": "t0", "observedGeneration": 1}
    ]
    second = merge(first, [Condition("Ready", False, "RuntimeNotReady", "0/2")], generation=2, now="t1")
    assert second[0]["lastTransitionTime"] == "t0"
    assert second[0]["observedGeneration"] == 2 and second[0]["message"] == "0/2"
    third = merge(second, [Condition("Ready", True, "Serving")], generation=2, now="t2")
    assert third[0]["lastTransitionTime"] == "t2" and third[0]["status"] == "True"


def test_merge_orders_and_drops_conditions():
    old = merge(None, [Condition("CanaryReady", True, "Serving"), Condition("Ready", True, "Serving")], generation=1, now="t0")
    assert [c["type"] for c in old] == ["Ready", "CanaryReady"]
    new = merge(old, [Condition("Degraded", False, "AsExpected"), Condition("Ready", True, "Serving")], generation=1, now="t1")
    assert [c["type"] for c in new] == ["Ready", "Degraded"]


def test_unknown_status():
    (c,) = merge(None, [Condition("Ready", None, "Unknown")], generation=1, now="t0")
    assert c["status"] == "Unknown"


def test_transitions_report_status_or_reason_changes_only():
    old = merge(None, [Condition("Ready", False, "RuntimeNotReady", "0/1")], generation=1, now="t0")
    same = merge(old, [Condition("Ready", False, "RuntimeNotReady", "still 0/1")], generation=1, now="t1")
    assert transitions(old, same) == []
    other = merge(old, [Condition("Ready", False, "RouterNotReady")], generation=1, now="t1")
    assert [c["reason"] for c in transitions(old, other)] == ["RouterNotReady"]
