"""`qwenvl bench-serve`: closed-loop load on a running OpenAI-compatible server.

For each concurrency level C, C workers send requests back to back until N have completed. Every
request streams (with usage) so the time to the first token is measured as the client sees it.
Reports requests/s, output tokens/s, and latency / TTFT percentiles per level.

    qwenvl bench-serve --url http://127.0.0.1:8000 --concurrency 1,4,16 --requests 32 --max-tokens 32
"""

from __future__ import annotations

# asyncio is imported where it runs: `qwenvl --help` builds this command's parser and should not pay for it.
import base64
import io
import json
import time


def add_arguments(p) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000",
                   help="server address, e.g. http://127.0.0.1:8000 (an OpenAI-style .../v1 base URL works too)")
    p.add_argument("--model", help="model id to send (default: the first of /v1/models)")
    p.add_argument("--api-key", help="bearer token, if the server needs one")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level (default 32)")
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                   help="let requests stop at EOS (by default every request generates exactly --max-tokens, "
                        "via the ignore_eos extension)")
    p.add_argument("--prompt", default="Describe the picture in detail.")
    p.add_argument("--image-size", type=int, default=0,
                   help="attach a random WxW image of this size as a data URI (default: text only)")
    p.add_argument("--image", help="attach this image file as a data URI")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def image_data_uri(args) -> str | None:
    if args.image:
        with open(args.image, "rb") as f:
            data = f.read()
        mime = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    if args.image_size:
        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(0).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"
    return None


async def one_request(client, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"ok": False, "status": r.status_code, "error": r.text[:200]}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if "error" in obj:
                return {"ok": False, "status": 200, "error": obj["error"].get("message")}
            if first is None and any(c.get("delta", {}).get("content") for c in obj.get("choices", [])):
                first = time.perf_counter()
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
    end = time.perf_counter()
    return {"ok": True, "latency": end - start, "ttft": (first or end) - start, "tokens": tokens}


async def run_level(client, url: str, body: dict, concurrency: int, total: int, on_done=None) -> dict:
    results: list[dict] = []
    counter = iter(range(total))

    async def worker():
        for _ in counter:
            results.append(await one_request(client, url, body))
            if on_done:
                on_done(concurrency, results[-1])

    start = time.perf_counter()
    import asyncio

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": total, "failed": len(results) - len(ok), "wall_s": wall,
            "req_per_s": len(ok) / wall, "out_tok_per_s": tokens / wall, "tokens": tokens,
            "latency_p50": percentile(lat, 50), "latency_p90": percentile(lat, 90), "latency_p99": percentile(lat, 99),
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "errors": sorted({str(r.get("error")) for r in results if not r["ok"]})[:3]}


async def bench(args, on_done=None) -> list[dict]:
    """One row per concurrency level; on_done(concurrency, result), if given, after every request."""
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    base = args.url.rstrip("/")
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    limits = httpx.Limits(max_connections=max(levels) + 4, max_keepalive_connections=max(levels) + 4)
    async with httpx.AsyncClient(headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model
        if model is None:
            r = await client.get(f"{base}/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        content: list[dict] = [{"type": "text", "text": args.prompt}]
        uri = image_data_uri(args)
        if uri:
            content.insert(0, {"type": "image_url", "image_url": {"url": uri}})
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        if args.ignore_eos:
            body["ignore_eos"] = True
        url = f"{base}/v1/chat/completions"
        await one_request(client, url, body)   # warm-up (first-call allocations)
        return [await run_level(client, url, body, c, args.requests, on_done) for c in levels]


def format_table(rows: list[dict]) -> str:
    head = ("| concurrency | requests | failed | req/s | output tok/s | latency p50 / p90 / p99 (s) "
            "| TTFT p50 / p99 (s) |\n|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['req_per_s']:.2f} | "
                     f"{r['out_tok_per_s']:.1f} | {r['latency_p50']:.3f} / {r['latency_p90']:.3f} / "
                     f"{r['latency_p99']:.3f} | {r['ttft_p50']:.3f} / {r['ttft_p99']:.3f} |")
    return "\n".join(lines)


def main(args, on_done=None) -> int:
    if args.requests < 1:
        raise ValueError("--requests must be >= 1")
    import asyncio

    rows = asyncio.run(bench(args, on_done))
    print(format_table(rows))
    for r in rows:
        if r["errors"]:
            print(f"concurrency {r['concurrency']}: errors: {r['errors']}")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["failed"] == 0 for r in rows) else 1
