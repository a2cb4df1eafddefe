"""A minimal OpenAI-shaped upstream for benchmarking the router: as little work per request as possible.

POST /v1/chat/completions and /v1/completions answer a fixed chat completion JSON, or with
`"stream": true` a fixed SSE stream of `max_tokens` chunks (default 8, at most 100,000) spaced by
--chunk-interval seconds (or the request's `"chunk_interval"`). GET /v1/models, /health. Raw ASGI on uvicorn (uvloop + httptools).

    python bench/upstream.py --port 9101 [--chunk-interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
}).encode()
CHUNK = b"data: " + json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "delta": {"content": "tok"}, "finish_reason": None}],
}).encode() + b"\n\n"
DONE = b"data: [DONE]\n\n"
MODELS = json.dumps({"object": "list", "data": [{"id": "bench", "object": "model", "owned_by": "bench"}]}).encode()
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def make_app(chunk_interval: float):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if scope["method"] == "POST":
            parts = []
            more = True
            while more:  # a list, not +=: bodies of 50 MB arrive in many chunks
                message = await receive()
                parts.append(message.get("body", b""))
                more = message.get("more_body", False)
            body = b"".join(parts)
            # Cheap check first: only bodies that mention streaming are parsed.
            if b'"stream"' in body[:4096]:
                request = json.loads(body)
                if request.get("stream"):
                    chunks = min(int(request.get("max_tokens") or 8), 100_000)
                    interval = float(request.get("chunk_interval", chunk_interval))
                    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                    for _ in range(chunks):
                        if interval:
                            await asyncio.sleep(interval)
                        await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
                    await send({"type": "http.response.body", "body": DONE})
                    return
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": COMPLETION})
            return
        body = MODELS if path == "/v1/models" else b"ok"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9101)
    parser.add_argument("--chunk-interval", type=float, default=0.0)
    args = parser.parse_args()
    import resource

    import uvicorn

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(make_app(args.chunk_interval), host=args.host, port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning", server_header=False, backlog=4096, timeout_keep_alive=30)


if __name__ == "__main__":
    main()
