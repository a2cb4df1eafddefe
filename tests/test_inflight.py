"""At most one reconcile in flight per object; refused applies retry with a growing delay."""

import threading

import kopf
import pytest
from fakekube import FakeKube, gpu_node, pxd
from pixtral_operator.children import retry_delay
from pixtral_operator.handlers import pixtral as handlers
from pixtral_operator.inflight import InFlight
from pixtral_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


@pytest.fixture(autouse=True)
def posted_events(monkeypatch):
    posted = []
    monkeypatch.setattr(handlers.kopf, "event", lambda body, **kw: posted.append(kw))
    return posted


class BlockingKube(FakeKube):
    """Counts reconciles inside the API at once; the first one waits on `release`."""

    def __init__(self):
        super().__init__(nodes=[gpu_node("gpu-0")])
        self.inside = 0
        self.most_inside = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._count = threading.Lock()

    def list_nodes(self):  # the first call of every reconcile
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        assert self.release.wait(10), "the test never released the first reconcile"
        return super().list_nodes()

    def leave(self):
        with self._count:
            self.inside -= 1


def test_a_resync_skips_while_a_change_handler_reconciles_and_a_second_change_waits():
    kube = BlockingKube()
    inflight = InFlight()
    done = []

    def change():
        done.append(handlers.run_reconcile(pxd(), kube, SETTINGS, inflight))
        kube.leave()

    first = threading.Thread(target=change)
    first.start()
    assert kube.entered.wait(10)
    # The resync finds the object busy and does nothing (no second reader of the same state).
    assert handlers.run_reconcile(pxd(), kube, SETTINGS, inflight, wait=False) is None
    second = threading.Thread(target=change)
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a second change handler must wait for the first"
    kube.release.set()
    first.join(10)
    second.join(10)
    assert len(done) == 2 and all(done)
    assert kube.most_inside == 1


def test_hold_without_waiting_and_with_a_timeout():
    inflight = InFlight()
    with inflight.hold(("team", "a")) as mine:
        assert mine
        with inflight.hold(("team", "a"), timeout=0) as other:
            assert not other
        with inflight.hold(("team", "a"), timeout=0.05) as other:
            assert not other
        with inflight.hold(("team", "b"), timeout=0) as neighbour:
            assert neighbour  # other objects are not held up
    with inflight.hold(("team", "a"), timeout=0) as again:
        assert again


def test_retry_delay_doubles_up_to_a_cap():
    assert [retry_delay(n) for n in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_refused_apply_raises_a_temporary_error_with_backoff_after_reporting_it(posted_events):
    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    kube.refuse[("Deployment", "demo-stable")] = (403, "deployments.apps is forbidden")
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.run_reconcile(pxd(), kube, SETTINGS, InFlight(), retry=3)
    assert raised.value.delay == 40
    assert "Deployment team/demo-stable" in str(raised.value) and "forbidden" in str(raised.value)
    assert any(e["reason"] == "ApplyFailed" and e["type"] == "Warning" for e in posted_events)
    degraded = next(c for c in kube.statuses[("team", "demo")]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed"


UNMAPPED = ('secrets "demo-apikey" is forbidden: cannot set blockOwnerDeletion in this case because cannot find '
            'RESTMapping for APIVersion serving.pixtral.dev/v1alpha1 Kind PixtralDeployment: no matches for kind')


def test_a_kind_the_api_server_does_not_map_yet_is_retried_every_2s_with_one_warning(posted_events):
    """Right after the CRD is installed, admission refuses owner references to its kind for a few
    seconds: retried at a short fixed delay, its Warning posted on the first pass only."""
    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    kube.refuse[("Deployment", "demo-stable")] = (403, UNMAPPED)
    delays = []
    for retry in range(6):
        with pytest.raises(kopf.TemporaryError) as raised:
            handlers.run_reconcile(pxd(), kube, SETTINGS, InFlight(), retry=retry)
        delays.append(raised.value.delay)
    assert delays == [2.0] * 6
    assert [e["reason"] for e in posted_events].count("ApplyFailed") == 1
    # Any other refusal keeps its backoff and its Warning on every pass.
    kube.refuse[("Deployment", "demo-stable")] = (403, "deployments.apps is forbidden")
    with pytest.raises(kopf.TemporaryError) as raised:
        handlers.run_reconcile(pxd(), kube, SETTINGS, InFlight(), retry=4)
    assert raised.value.delay == retry_delay(4) == 80
    assert [e["reason"] for e in posted_events].count("ApplyFailed") == 2


def degraded_gauge(name):
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("pixtral_operator_degraded", {"namespace": "team", "name": name})


def test_a_deleted_object_leaves_no_degraded_gauge():
    from pixtral_operator.scale_loop import Scaler

    kube = FakeKube(nodes=[gpu_node("gpu-0")])
    inflight = InFlight()
    handlers.run_reconcile(pxd(name="gone", spec={"router": {"apiKeysSecretRef": {"name": "missing"}}}), kube,
                           SETTINGS, inflight)
    assert degraded_gauge("gone") == 1
    handlers.forget_object("team", "gone", Scaler(kube, None), inflight)
    assert degraded_gauge("gone") is None
    handlers.forget_object("team", "gone", Scaler(kube, None), inflight)  # twice is fine
