"""OperatorSettings.from_env: the images and the NetworkPolicy's metrics namespaces (docs/settings.md)."""

import pytest
from pixtral_operator import settings as S
from pixtral_operator._version import __version__
from pixtral_operator.settings import OperatorSettings


def test_defaults_are_the_release_images():
    s = OperatorSettings.from_env({})
    assert s.runtime_image == S.DEFAULT_RUNTIME_IMAGE == f"ghcr.io/pixtral-operator/pixtral-runtime:{__version__}"
    assert s.router_image == S.DEFAULT_ROUTER_IMAGE == f"ghcr.io/pixtral-operator/pixtral-router:{__version__}"
    assert s.metrics_from_namespaces == ("monitoring",)


def test_router_image_is_its_own_setting():
    s = OperatorSettings.from_env({"PIXTRAL_RUNTIME_IMAGE": "r/runtime:2"})
    assert s.runtime_image == "r/runtime:2" and s.router_image == S.DEFAULT_ROUTER_IMAGE
    s = OperatorSettings.from_env({"PIXTRAL_ROUTER_IMAGE": "r/router:2", "PIXTRAL_RUNTIME_IMAGE": ""})
    assert s.router_image == "r/router:2" and s.runtime_image == S.DEFAULT_RUNTIME_IMAGE


def test_metrics_namespaces_unset_empty_and_listed():
    assert OperatorSettings.from_env({"PIXTRAL_METRICS_FROM_NAMESPACES": ""}).metrics_from_namespaces == ()
    listed = OperatorSettings.from_env({"PIXTRAL_METRICS_FROM_NAMESPACES": " obs , prom,"})
    assert listed.metrics_from_namespaces == ("obs", "prom")


def test_strict_gpu_check_is_off_by_default_and_parsed_as_a_flag():
    assert OperatorSettings.from_env({}).strict_gpu_check is False
    assert OperatorSettings.from_env({"PIXTRAL_STRICT_GPU_CHECK": "true"}).strict_gpu_check is True
    assert OperatorSettings.from_env({"PIXTRAL_STRICT_GPU_CHECK": " On "}).strict_gpu_check is True
    assert OperatorSettings.from_env({"PIXTRAL_STRICT_GPU_CHECK": "0"}).strict_gpu_check is False


def test_a_flag_that_is_not_a_boolean_names_the_variable():
    with pytest.raises(S.SettingsError, match="PIXTRAL_STRICT_GPU_CHECK='maybe'"):
        OperatorSettings.from_env({"PIXTRAL_STRICT_GPU_CHECK": "maybe"})


def test_monitoring_mode_defaults_to_annotations_and_refuses_unknown_modes():
    assert OperatorSettings.from_env({}).monitoring == "annotations"
    assert OperatorSettings.from_env({"PIXTRAL_MONITORING": "PodMonitor"}).monitoring == "podmonitor"
    for bad in ("both", "servicemonitor"):
        with pytest.raises(S.SettingsError, match=f"PIXTRAL_MONITORING='{bad}'.*annotations, podmonitor"):
            OperatorSettings.from_env({"PIXTRAL_MONITORING": bad})


def test_monitor_labels_are_parsed_and_checked():
    s = OperatorSettings.from_env({"PIXTRAL_MONITOR_LABELS": "release=kube-prometheus-stack, example.com/team=ml,empty="})
    assert s.monitor_labels == (("release", "kube-prometheus-stack"), ("example.com/team", "ml"), ("empty", ""))
    assert OperatorSettings.from_env({}).monitor_labels == ()
    for bad in ("release", "bad key=x", "k=not valid", "-k=v"):
        with pytest.raises(S.SettingsError, match="PIXTRAL_MONITOR_LABELS"):
            OperatorSettings.from_env({"PIXTRAL_MONITOR_LABELS": bad})


def test_monitor_interval_defaults_to_15s_and_must_be_a_prometheus_duration():
    assert OperatorSettings.from_env({}).monitor_interval == "15s"
    assert OperatorSettings.from_env({"PIXTRAL_MONITOR_INTERVAL": "1m30s"}).monitor_interval == "1m30s"
    for bad in ("0", "15", "15 s", "fast", "-5s"):
        with pytest.raises(S.SettingsError, match="PIXTRAL_MONITOR_INTERVAL"):
            OperatorSettings.from_env({"PIXTRAL_MONITOR_INTERVAL": bad})


def test_the_peering_lifetime_defaults_to_ten_seconds_and_refuses_nonsense():
    from pixtral_operator.settings import OperatorSettings, SettingsError

    assert OperatorSettings.from_env({}).peering_lifetime_seconds == 10
    assert OperatorSettings.from_env({"PIXTRAL_PEERING_LIFETIME_SECONDS": "30"}).peering_lifetime_seconds == 30
    for bad in ("0", "ten", "-5"):
        with pytest.raises(SettingsError, match="PIXTRAL_PEERING_LIFETIME_SECONDS"):
            OperatorSettings.from_env({"PIXTRAL_PEERING_LIFETIME_SECONDS": bad})


def test_the_replica_that_started_first_keeps_the_highest_peering_priority():
    from pixtral_operator.__main__ import peering_priority

    first = peering_priority(1_800_000_000.0, 999)
    replacement = peering_priority(1_800_000_001.0, 0)
    assert first > replacement > 0
    assert peering_priority(1_800_000_000.2, 3) != peering_priority(1_800_000_000.7, 4), "same second: the tiebreak decides"


def test_the_worker_threads_default_to_sixteen_and_refuse_nonsense():
    from pixtral_operator.settings import OperatorSettings, SettingsError

    assert OperatorSettings.from_env({}).worker_threads == 16
    assert OperatorSettings.from_env({"PIXTRAL_WORKER_THREADS": "4"}).worker_threads == 4
    for bad in ("0", "many"):
        with pytest.raises(SettingsError, match="PIXTRAL_WORKER_THREADS=.*whole number of threads"):
            OperatorSettings.from_env({"PIXTRAL_WORKER_THREADS": bad})
