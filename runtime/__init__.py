"""pixtral_runtime: the vLLM supervisor (`pixtral-runtime serve`), the tenant-facing router
(`pixtral-runtime router`) and a tiny random-weight Pixtral for smoke tests (`pixtral-runtime tiny-model`)."""

__version__ = "0.1.0"
