"""The autoscaler's signal: one track's load, read from Prometheus' HTTP API.

Three parts, each its own instant query so that "no data" stays distinguishable from "zero load"
(a single ``... or vector(0)`` expression would turn a dead scrape into an idle track and scale
it down):

* engine load: ``sum(vllm:num_requests_waiting{sel}) + sum(vllm:num_requests_running{sel})``
  over the track's runtime pods;
* engine coverage: how many pods report (``count(count by (pod) (...))``) and how old the oldest
  of their samples is (``min(timestamp(...))``), compared by :func:`assess` with the track's ready
  replicas and a freshness bound;
* router demand: ``sum({__name__=~"pixtral_router_pending_requests|pixtral_router_fallback_requests",...})``,
  requests routed to the track that found no ready backend of it: held while no backend of any
  track is ready, or served by the other track meanwhile. The router labels both by the track the
  request was routed to (router pods themselves carry no track label); an unlabelled series, as
  older routers export, counts for the stable track.

``spec.autoscaling.prometheusQuery`` replaces all three with one expression that must return one
sample: the track's whole load.

Only :class:`PrometheusClient` does I/O; rendering, parsing and assessment are pure.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any

import httpx
from pixtral_operator.scale_decision import Signal
from pixtral_operator.spec import TRACKS

ENGINE_WAITING_METRIC = "vllm:num_requests_waiting"
ENGINE_RUNNING_METRIC = "vllm:num_requests_running"
ROUTER_PENDING_METRIC = "pixtral_router_pending_requests"
ROUTER_FALLBACK_METRIC = "pixtral_router_fallback_requests"

PLACEHOLDERS = ("namespace", "deployment", "track")
DEFAULT_TIMEOUT_SECONDS = 5.0
# Samples older than this (seconds) are stale: a few scrape intervals, well under Prometheus'
# own 5-minute lookback, within which it would otherwise keep answering with the last value.
DEFAULT_MAX_SAMPLE_AGE_SECONDS = 60.0

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class QueryConfigError(ValueError):
    """A query could not be built from the spec; the message names the problem."""


def escape_label_value(value: str) -> str:
    """The body of a PromQL double-quoted string literal holding ``value``."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_selector(labels: dict[str, str], regex_labels: dict[str, str] | None = None) -> str:
    matchers = [f'{name}="{escape_label_value(value)}"' for name, value in labels.items()]
    matchers += [f'{name}=~"{escape_label_value(value)}"' for name, value in (regex_labels or {}).items()]
    return "{" + ",".join(matchers) + "}"


@dataclass(frozen=True)
class TrackQueries:
    """The PromQL the autoscaler runs for one track; ``override`` set means only it runs."""

    engine_load: str = ""
    engine_pods: str = ""
    engine_oldest_sample: str = ""
    router_pending: str = ""
    override: str = ""


def default_queries(namespace: str, deployment: str, track: str) -> TrackQueries:
    _check_target(namespace, deployment, track)
    engine = label_selector({"namespace": namespace, "deployment": deployment, "track": track})
    # The router labels its series with the track a request was routed to; the empty alternative
    # of the regex matches an absent label (older routers), so those count for stable.
    router_track = "stable|" if track == "stable" else track
    router = label_selector(
        {"namespace": namespace, "deployment": deployment},
        {"__name__": f"{ROUTER_PENDING_METRIC}|{ROUTER_FALLBACK_METRIC}", "track": router_track},
    )
    return TrackQueries(
        engine_load=f"sum({ENGINE_WAITING_METRIC}{engine}) + sum({ENGINE_RUNNING_METRIC}{engine})",
        engine_pods=f"count(count by (pod) ({ENGINE_RUNNING_METRIC}{engine}))",
        engine_oldest_sample=f"min(timestamp({ENGINE_RUNNING_METRIC}{engine}))",
        router_pending=f"sum({router})",
    )


def render_override(template: str, namespace: str, deployment: str, track: str) -> TrackQueries:
    """Fill ``{namespace}``, ``{deployment}`` and ``{track}`` in a spec.autoscaling.prometheusQuery.

    Values are escaped for use inside a PromQL string literal, e.g. ``deployment="{deployment}"``.
    PromQL's own braces always hold matchers (``name="..."``), so a bare ``{word}`` can only be a
    placeholder, and an unknown one is an error rather than a query that silently matches nothing.
    """
    _check_target(namespace, deployment, track)
    if not isinstance(template, str) or not template.strip():
        raise QueryConfigError("spec.autoscaling.prometheusQuery must be a non-empty PromQL expression")
    values = {"namespace": namespace, "deployment": deployment, "track": track}
    unknown = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if unknown:
        raise QueryConfigError(
            f"spec.autoscaling.prometheusQuery uses unknown placeholder(s) "
            f"{', '.join('{' + name + '}' for name in unknown)}; known: "
            f"{', '.join('{' + name + '}' for name in PLACEHOLDERS)}"
        )
    rendered = _PLACEHOLDER.sub(lambda match: escape_label_value(values[match.group(1)]), template)
    return TrackQueries(override=rendered)


def track_queries(namespace: str, deployment: str, track: str, override: str | None = None) -> TrackQueries:
    if override:
        return render_override(override, namespace, deployment, track)
    return default_queries(namespace, deployment, track)


def _check_target(namespace: str, deployment: str, track: str) -> None:
    for name, value in (("namespace", namespace), ("deployment", deployment)):
        if not isinstance(value, str) or not value:
            raise QueryConfigError(f"{name} must be a non-empty string, got {value!r}")
    if track not in TRACKS:
        raise QueryConfigError(f"track must be one of {', '.join(TRACKS)}, got {track!r}")


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True)
class QueryResult:
    """One instant query's outcome. ``ok`` False carries ``error``; ``ok`` with no samples is "no data"."""

    ok: bool
    samples: tuple[Sample, ...] = ()
    error: str = ""

    @property
    def empty(self) -> bool:
        return self.ok and not self.samples

    @property
    def value(self) -> float | None:
        """The value of a single-sample answer (None when empty, failed or ambiguous)."""
        return self.samples[0].value if self.ok and len(self.samples) == 1 else None

    @property
    def timestamp(self) -> float | None:
        """The sample's timestamp; for an aggregation this is the query's evaluation time."""
        return self.samples[0].timestamp if self.ok and len(self.samples) == 1 else None

    @classmethod
    def failure(cls, error: str) -> QueryResult:
        return cls(ok=False, error=error)


def parse_query_response(status_code: int, body: bytes) -> QueryResult:
    """Turn an /api/v1/query HTTP answer into a :class:`QueryResult` (never raises)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        snippet = body[:200].decode("utf-8", "replace").strip()
        return QueryResult.failure(f"HTTP {status_code}: response is not JSON: {snippet!r}")
    if not isinstance(document, dict):
        return QueryResult.failure(f"HTTP {status_code}: response is not a JSON object")
    if document.get("status") != "success":
        error_type = document.get("errorType") or "unknown"
        error = document.get("error") or "no error message"
        return QueryResult.failure(f"HTTP {status_code}: Prometheus {error_type} error: {error}")
    if status_code != 200:
        return QueryResult.failure(f"HTTP {status_code} with a success body")
    data = document.get("data")
    if not isinstance(data, dict):
        return QueryResult.failure("response has no data object")
    result_type, result = data.get("resultType"), data.get("result")
    try:
        if result_type == "vector":
            samples = tuple(_vector_sample(item) for item in result)
        elif result_type == "scalar":
            samples = (_sample({}, result),)
        else:
            return QueryResult.failure(
                f"query returned a {result_type}; an instant vector or scalar is needed"
            )
    except (TypeError, ValueError, KeyError, IndexError) as error:
        return QueryResult.failure(f"malformed {result_type} result: {error}")
    bad = [s for s in samples if not math.isfinite(s.value)]
    if bad:
        return QueryResult.failure(f"query returned a non-finite value ({bad[0].value}) for {bad[0].labels}")
    return QueryResult(ok=True, samples=samples)


def _vector_sample(item: Any) -> Sample:
    return _sample(item["metric"], item["value"])


def _sample(labels: Any, pair: Any) -> Sample:
    if not isinstance(labels, dict) or not isinstance(pair, list) or len(pair) != 2:
        raise ValueError(f"unexpected sample shape {pair!r}")
    # Prometheus sends values as strings so that NaN and +Inf survive JSON.
    return Sample(labels=dict(labels), value=float(pair[1]), timestamp=float(pair[0]))


class PrometheusClient:
    """A small async client for GET /api/v1/query; transport failures come back as error results."""

    def __init__(
        self,
        base_url: str,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise QueryConfigError(
                f"the Prometheus URL must start with http:// or https://, got {base_url!r}"
            )
        if not timeout_seconds > 0:
            raise QueryConfigError(f"the Prometheus timeout must be > 0 seconds, got {timeout_seconds!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._client = client or httpx.AsyncClient(timeout=timeout_seconds)
        self._owns_client = client is None

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def query(self, promql: str, at: float | None = None) -> QueryResult:
        """Run an instant query; ``at`` (epoch seconds) defaults to Prometheus' own now."""
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base_url}/api/v1/query"
        try:
            response = await self._client.get(url, params=params, timeout=self.timeout_seconds)
        except httpx.TimeoutException:
            return QueryResult.failure(
                f"Prometheus at {self.base_url} did not answer within {self.timeout_seconds:g}s"
            )
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return QueryResult.failure(
                f"Prometheus at {self.base_url} unreachable: {type(error).__name__}: {error}"
            )
        return parse_query_response(response.status_code, response.content)


@dataclass(frozen=True)
class TrackReadings:
    """The raw answers for one track at one tick (the input of :func:`assess`)."""

    engine_load: QueryResult | None = None
    engine_pods: QueryResult | None = None
    engine_oldest_sample: QueryResult | None = None
    router_pending: QueryResult | None = None
    override: QueryResult | None = None


async def read_track(
    client: PrometheusClient, queries: TrackQueries, at: float | None = None
) -> TrackReadings:
    """Run a track's queries concurrently."""
    if queries.override:
        return TrackReadings(override=await client.query(queries.override, at))
    engine_load, engine_pods, engine_oldest, router_pending = await asyncio.gather(
        client.query(queries.engine_load, at),
        client.query(queries.engine_pods, at),
        client.query(queries.engine_oldest_sample, at),
        client.query(queries.router_pending, at),
    )
    return TrackReadings(
        engine_load=engine_load,
        engine_pods=engine_pods,
        engine_oldest_sample=engine_oldest,
        router_pending=router_pending,
    )


def assess(
    readings: TrackReadings,
    ready_replicas: int,
    max_sample_age_seconds: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS,
) -> Signal:
    """Turn raw readings into the :class:`Signal` the decision needs.

    The engine part is complete when every ready pod of the track reports and the oldest sample is
    fresh; with no ready pods nothing is expected from the engine, so its part is 0 (or what pods
    that are still draining report). The router part matters for waking a track at zero replicas;
    while pods are ready the router holds nothing (it only holds requests when no backend is
    ready), so its absence then only marks the wake signal as invisible.
    """
    if readings.override is not None:
        return _assess_override(readings.override)

    problems: list[str] = []
    router_pending = _router_part(readings.router_pending, problems)
    engine_load, engine_complete = _engine_part(readings, ready_replicas, max_sample_age_seconds, problems)

    if engine_load is None and router_pending is None:
        return Signal.missing("; ".join(problems))
    complete = engine_complete and (router_pending is not None or ready_replicas > 0)
    return Signal(
        load=(engine_load or 0.0) + (router_pending or 0.0),
        complete=complete,
        wake_visible=router_pending is not None,
        problem="; ".join(problems),
    )


def _assess_override(result: QueryResult) -> Signal:
    if not result.ok:
        return Signal.missing(f"prometheusQuery failed: {result.error}")
    if not result.samples:
        return Signal.missing(
            "prometheusQuery returned no sample (add `or vector(0)` if 0 is a valid reading)"
        )
    if len(result.samples) > 1:
        return Signal.missing(
            f"prometheusQuery returned {len(result.samples)} series; it must return one (wrap it in sum())"
        )
    # The override is the whole load; whether it includes the router's pending gauge is up to
    # its author, so the autoscaler trusts it to wake the track too.
    return Signal(load=result.samples[0].value, complete=True, wake_visible=True)


def _router_part(result: QueryResult | None, problems: list[str]) -> float | None:
    if result is None:
        problems.append("router pending-requests query not run")
        return None
    if not result.ok:
        problems.append(f"router pending-requests query failed: {result.error}")
        return None
    if result.empty:
        problems.append(f"no {ROUTER_PENDING_METRIC} series from the router")
        return None
    return sum(sample.value for sample in result.samples)


def _engine_part(
    readings: TrackReadings, ready_replicas: int, max_sample_age_seconds: float, problems: list[str]
) -> tuple[float | None, bool]:
    engine_load, engine_pods, oldest = (
        readings.engine_load or QueryResult.failure("not run"),
        readings.engine_pods or QueryResult.failure("not run"),
        readings.engine_oldest_sample or QueryResult.failure("not run"),
    )
    for name, result in (("load", engine_load), ("pods", engine_pods), ("sample age", oldest)):
        if not result.ok:
            problems.append(f"engine {name} query failed: {result.error}")
            return None, False
    load = engine_load.value
    pods = int(engine_pods.value or 0)
    if ready_replicas <= 0:
        return (load or 0.0), True
    if pods == 0 or load is None:
        problems.append(f"no vLLM queue metrics from any of {ready_replicas} ready pod(s)")
        return None, False
    if oldest.value is not None and oldest.timestamp is not None:
        age = oldest.timestamp - oldest.value
        if age > max_sample_age_seconds:
            problems.append(
                f"vLLM queue metrics are {age:.0f}s old (stale after {max_sample_age_seconds:g}s)"
            )
            return None, False
    if pods < ready_replicas:
        problems.append(f"vLLM queue metrics from {pods} of {ready_replicas} ready pods")
        return load, False
    return load, True


async def read_signal(
    client: PrometheusClient,
    namespace: str,
    deployment: str,
    track: str,
    ready_replicas: int,
    prometheus_query: str | None = None,
    max_sample_age_seconds: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS,
) -> Signal:
    """One track's :class:`Signal` for the timer; never raises.

    A prometheusQuery that cannot be rendered becomes a missing signal carrying the error, so the
    track holds and its status names the problem instead of the timer failing every tick.
    """
    try:
        queries = track_queries(namespace, deployment, track, prometheus_query)
    except QueryConfigError as error:
        return Signal.missing(str(error))
    readings = await read_track(client, queries)
    return assess(readings, ready_replicas=ready_replicas, max_sample_age_seconds=max_sample_age_seconds)


# --- one query per signal for every PixtralDeployment at once ("the fleet")
#
# The four default parts above, grouped by (namespace, deployment, track) instead of selecting one
# track: a tick costs four queries whatever the number of objects, and each track's answer is cut
# out of them in memory (`split_fleet`). The per-track semantics stay those of `default_queries`:
# a group that is absent is "no data" for that track, a failed query fails every track.

FLEET_LABELS = ("namespace", "deployment", "track")
_BY = "by (namespace, deployment, track)"
_OURS = '{deployment!=""}'  # series Prometheus' discovery labelled with a PixtralDeployment


@dataclass(frozen=True)
class FleetQueries:
    engine_load: str
    engine_pods: str
    engine_oldest_sample: str
    router_pending: str


def fleet_queries() -> FleetQueries:
    router = label_selector(
        {}, {"__name__": f"{ROUTER_PENDING_METRIC}|{ROUTER_FALLBACK_METRIC}", "deployment": ".+"}
    )
    return FleetQueries(
        engine_load=f"sum {_BY} ({ENGINE_WAITING_METRIC}{_OURS}) + sum {_BY} ({ENGINE_RUNNING_METRIC}{_OURS})",
        engine_pods=f"count {_BY} (count by (namespace, deployment, track, pod) ({ENGINE_RUNNING_METRIC}{_OURS}))",
        engine_oldest_sample=f"min {_BY} (timestamp({ENGINE_RUNNING_METRIC}{_OURS}))",
        router_pending=f"sum {_BY} ({router})",
    )


@dataclass(frozen=True)
class FleetResults:
    engine_load: QueryResult
    engine_pods: QueryResult
    engine_oldest_sample: QueryResult
    router_pending: QueryResult


def _of(result: QueryResult, namespace: str, deployment: str, tracks: tuple[str, ...]) -> QueryResult:
    if not result.ok:
        return result
    return QueryResult(
        ok=True,
        samples=tuple(
            s for s in result.samples
            if s.labels.get("namespace") == namespace
            and s.labels.get("deployment") == deployment
            and s.labels.get("track", "") in tracks
        ),
    )


def split_fleet(results: FleetResults, namespace: str, deployment: str, track: str) -> TrackReadings:
    """Pure: one track's readings, cut out of the fleet's answers. The router's series of older
    routers carry no track label: they count for stable (as in `default_queries`)."""
    _check_target(namespace, deployment, track)
    router_tracks = ("stable", "") if track == "stable" else (track,)
    return TrackReadings(
        engine_load=_of(results.engine_load, namespace, deployment, (track,)),
        engine_pods=_of(results.engine_pods, namespace, deployment, (track,)),
        engine_oldest_sample=_of(results.engine_oldest_sample, namespace, deployment, (track,)),
        router_pending=_of(results.router_pending, namespace, deployment, router_tracks),
    )


class FleetReader:
    """The fleet's answers, read at most once per `max_age_seconds`: every object's timer that ticks
    within that time shares one set of four queries (concurrent ticks wait for the same read)."""

    def __init__(self, client: PrometheusClient, max_age_seconds: float) -> None:
        if not max_age_seconds > 0:
            raise QueryConfigError(f"the fleet read's max age must be > 0 seconds, got {max_age_seconds!r}")
        self.client = client
        self.max_age_seconds = max_age_seconds
        self._lock = asyncio.Lock()
        self._taken: float | None = None
        self._results: FleetResults | None = None
        self.reads = 0  # fleet reads done (each is four queries)

    async def results(self, now: float) -> FleetResults:
        """`now`: the tick's time (epoch seconds); an answer older than max_age_seconds is read again."""
        async with self._lock:
            taken = self._taken
            if self._results is None or taken is None or not 0 <= now - taken < self.max_age_seconds:
                queries = fleet_queries()
                load, pods, oldest, pending = await asyncio.gather(
                    self.client.query(queries.engine_load),
                    self.client.query(queries.engine_pods),
                    self.client.query(queries.engine_oldest_sample),
                    self.client.query(queries.router_pending),
                )
                self._results = FleetResults(load, pods, oldest, pending)
                self._taken = now
                self.reads += 1
            return self._results


async def read_fleet_signal(
    fleet: FleetReader,
    now: float,
    namespace: str,
    deployment: str,
    track: str,
    ready_replicas: int,
    prometheus_query: str | None = None,
    max_sample_age_seconds: float = DEFAULT_MAX_SAMPLE_AGE_SECONDS,
) -> Signal:
    """As `read_signal`, from the fleet's shared answers; a spec's own prometheusQuery still runs
    for its object alone (it cannot be grouped)."""
    if prometheus_query:
        return await read_signal(
            fleet.client, namespace, deployment, track, ready_replicas, prometheus_query, max_sample_age_seconds
        )
    try:
        readings = split_fleet(await fleet.results(now), namespace, deployment, track)
    except QueryConfigError as error:
        return Signal.missing(str(error))
    return assess(readings, ready_replicas=ready_replicas, max_sample_age_seconds=max_sample_age_seconds)
