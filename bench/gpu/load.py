"""Streaming OpenAI-chat load for a Pixtral server (vLLM directly or through the router).

Each request carries one image and its own text. Images are fresh by default (a random 16x16
pattern upscaled, JPEG), so neither vLLM's multimodal cache nor its prefix cache can reuse anything;
`pool=N` draws them from N fixed images instead (the repeated-image workload), uniformly or, with
`zipf=s`, with the k-th image weighted 1/k^s (a few popular images, a long tail). The image comes
before the text, so a repeated image is also a shared prompt prefix. The seed base is random per
process: images never repeat across runs against one long-lived server.

Output length is fixed (min_tokens = max_tokens, ignore_eos). TTFT = request sent -> first SSE chunk
with `choices`; token counts come from the final usage chunk.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import statistics
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
from PIL import Image

_seed = [int.from_bytes(os.urandom(4), "little") << 8]


def image_url(size: int, seed: int | None = None) -> str:
    if seed is None:
        _seed[0] += 1
        seed = _seed[0]
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(model: str, text: str, images: list[str], max_tokens: int) -> dict:
    content = [{"type": "image_url", "image_url": {"url": u}} for u in images] + [{"type": "text", "text": text}]
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def one(session: aiohttp.ClientSession, base: str, body: dict, headers: dict | None = None) -> dict:
    t0 = time.perf_counter()
    ttft = None
    usage = None
    async with session.post(base + "/v1/chat/completions", json=body, headers=headers or {}) as r:
        if r.status != 200:
            return {"status": r.status, "error": (await r.text())[:300], "e2e": time.perf_counter() - t0,
                    "end": time.perf_counter()}
        buf = b""
        async for data in r.content.iter_any():
            buf += data
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if not line.startswith(b"data: ") or line[6:].strip() == b"[DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if obj.get("choices") and ttft is None:
                        ttft = time.perf_counter() - t0
                    if obj.get("usage"):
                        usage = obj["usage"]
    end = time.perf_counter()
    out = {"status": 200, "ttft": ttft, "e2e": end - t0, "end": end}
    if usage:
        out["prompt_tokens"] = usage.get("prompt_tokens")
        out["completion_tokens"] = usage.get("completion_tokens")
    return out


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


@dataclass(frozen=True)
class Workload:
    concurrency: int
    requests: int
    image_px: int = 512
    max_tokens: int = 128
    pool: int = 0  # 0: a fresh image per request; N: drawn from N fixed images
    zipf: float = 0.0  # 0: a uniform draw from the pool; s > 0: image k weighted 1 / k**s
    tag: str = "load"

    @property
    def name(self) -> str:
        if not self.pool:
            return "unique images"
        return f"repeated: {self.pool} images" + (f", Zipf {self.zipf:g}" if self.zipf else "")


def parse_pool(text: str) -> tuple[int, float]:
    """`0` (unique), `N` (uniform over N images) or `zN` (Zipf, exponent 1.1, over N images)."""
    if text.startswith("z"):
        return int(text[1:]), 1.1
    return int(text), 0.0


def bodies_for(w: Workload, model: str, rng: random.Random) -> list[dict]:
    if w.pool:
        pool = [image_url(w.image_px) for _ in range(w.pool)]
        weights = [1 / (k + 1) ** w.zipf for k in range(w.pool)] if w.zipf else None
        images = rng.choices(pool, weights=weights, k=w.requests)
    else:
        images = [image_url(w.image_px) for _ in range(w.requests)]
    return [chat_body(model, f"[{w.tag} {i}] Describe this image in detail.", [img], w.max_tokens)
            for i, img in enumerate(images)]


def summarise(w: Workload, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["status"] == 200]
    ttfts = [r["ttft"] for r in ok if r.get("ttft") is not None]
    e2es = [r["e2e"] for r in ok]
    out_tokens = sum(r.get("completion_tokens") or 0 for r in ok)
    return {
        "concurrency": w.concurrency, "requests": w.requests, "ok": len(ok), "image_px": w.image_px,
        "max_tokens": w.max_tokens, "pool": w.pool, "zipf": w.zipf, "workload": w.name, "wall_s": round(wall, 3),
        "req_per_s": round(len(ok) / wall, 3), "out_tok_per_s": round(out_tokens / wall, 1),
        "prompt_tokens_each": ok[0].get("prompt_tokens") if ok else None,
        "ttft_p50_ms": round(pct(ttfts, 0.5) * 1000, 1), "ttft_p99_ms": round(pct(ttfts, 0.99) * 1000, 1),
        "ttft_mean_ms": round(statistics.mean(ttfts) * 1000, 1) if ttfts else None,
        "e2e_p50_ms": round(pct(e2es, 0.5) * 1000, 1), "e2e_p99_ms": round(pct(e2es, 0.99) * 1000, 1),
        "errors": [r for r in results if r["status"] != 200][:3],
    }


async def closed_loop(session: aiohttp.ClientSession, base: str, w: Workload, *, model: str,
                      headers: dict | None = None, seed: int = 0) -> dict:
    """`w.concurrency` workers, each sending its next request when the previous one finished."""
    bodies = bodies_for(w, model, random.Random(seed))
    queue = list(range(len(bodies)))
    results: list[dict] = []

    async def worker() -> None:
        while queue:
            results.append(await one(session, base, bodies[queue.pop(0)], headers))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(w.concurrency)))
    return summarise(w, results, time.perf_counter() - t0)


async def open_loop(session: aiohttp.ClientSession, base: str, w: Workload, *, model: str, rate: float,
                    headers: dict | None = None, seed: int = 0) -> dict:
    """Requests sent at Poisson arrivals of `rate` per second, whatever the server's state: no burst
    follows a decode wave, so TTFT shows the server's cost per request (below its capacity) rather
    than how a balancer splits bursts. `w.concurrency` is not used."""
    rng = random.Random(seed)
    bodies = bodies_for(w, model, rng)
    t0 = time.perf_counter()
    at = 0.0
    tasks = []
    for body in bodies:
        at += rng.expovariate(rate)
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(session, base, body, headers)))
    results = list(await asyncio.gather(*tasks))
    summary = summarise(w, results, time.perf_counter() - t0)
    summary.update(arrival="poisson", rate_per_s=rate)
    return summary


async def warm_up(session: aiohttp.ClientSession, base: str, *, model: str, headers: dict | None = None) -> list[int]:
    """A text request, one 1024 px image and a small concurrent batch; returns their statuses."""
    statuses = [(await one(session, base, chat_body(model, "Hello.", [], 16), headers))["status"]]
    statuses.append((await one(session, base, chat_body(model, "warm", [image_url(1024)], 16), headers))["status"])
    batch = await asyncio.gather(*(one(session, base, chat_body(model, f"warm {i}", [image_url(512)], 16), headers)
                                   for i in range(8)))
    return statuses + [r["status"] for r in batch]


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=900))
