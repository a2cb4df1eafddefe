"""kopf handler registration; the only place that uses kopf decorators."""
