import logging

import kopf
from pixtral_operator.cache import ObjectCache
from pixtral_operator.handlers.pixtral import register
from pixtral_operator.logfilter import KOPF_OBJECTS_LOGGER, RoutineSuccessFilter, is_routine_success
from pixtral_operator.scale_loop import Scaler
from pixtral_operator.settings import OperatorSettings

ROUTINE = frozenset({"autoscale", "configmaps-changed"})


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(KOPF_OBJECTS_LOGGER, level, __file__, 1, message, None, None)


def test_only_a_routine_handlers_success_is_dropped():
    assert is_routine_success("Timer 'autoscale' succeeded.", ROUTINE)
    assert is_routine_success("Handler 'configmaps-changed' succeeded.", ROUTINE)
    # A change handler's success, a routine handler's failure and anything else are kept.
    assert not is_routine_success("Handler 'reconcile/create' succeeded.", ROUTINE)
    assert not is_routine_success("Timer 'autoscale' failed temporarily: API down", ROUTINE)
    assert not is_routine_success("Timer 'autoscale' succeeded. extra", ROUTINE)


def test_the_filter_keeps_warnings_and_other_lines():
    keep = RoutineSuccessFilter(ROUTINE).filter
    assert not keep(record("Timer 'autoscale' succeeded."))
    assert keep(record("Timer 'autoscale' succeeded.", logging.WARNING))
    assert keep(record("Creation is processed: 1 succeeded; 0 failed."))


def test_register_names_every_timer_and_watch_handler_it_registers():
    registry = kopf.OperatorRegistry()
    routine = register(registry, OperatorSettings(), kube=None, scaler=Scaler(None, None), cache=ObjectCache())
    timers = {h.id for h in registry._spawning.get_all_handlers() if type(h).__name__ == "TimerHandler"}
    watchers = {h.id for h in registry._watching.get_all_handlers()}
    assert timers | watchers == routine
    changing = {h.id for h in registry._changing.get_all_handlers()}
    assert not changing & routine
