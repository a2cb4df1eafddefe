# The slim router image: `pixtral-runtime router` without vLLM or torch. Build from the repository root:
#   docker build -f runtime/router.Dockerfile -t ghcr.io/pixtral-operator/pixtral-router:0.1.0 .
# The router imports only uvicorn[standard] (httptools and uvloop are its parser and event loop),
# the Kubernetes client, orjson, Pillow, prometheus-client, PyYAML and, for spec.tracing, the
# OpenTelemetry SDK with its OTLP exporters. The project is installed
# with these alone, not with its runtime extra, whose other entries (fastapi, httpx, mistral-common,
# safetensors) serve the vLLM side. The version bounds are pyproject.toml's.

FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY runtime/ runtime/
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    "uvicorn[standard]>=0.29" "kubernetes>=30" "pillow>=10" "orjson>=3.10" "opentelemetry-sdk>=1.26" \
    "opentelemetry-exporter-otlp-proto-grpc>=1.26" "opentelemetry-exporter-otlp-proto-http>=1.26"

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels pixtral-operator \
    "uvicorn[standard]>=0.29" "kubernetes>=30" "pillow>=10" "orjson>=3.10" "opentelemetry-sdk>=1.26" \
    "opentelemetry-exporter-otlp-proto-grpc>=1.26" "opentelemetry-exporter-otlp-proto-http>=1.26"
# 65532 is the conventional "nonroot" uid, as in the operator image.
USER 65532:65532
# The router serves tenants on 8080 and /metrics on 9090 (docs/settings.md).
EXPOSE 8080 9090
ENTRYPOINT ["pixtral-runtime"]
CMD ["router"]
