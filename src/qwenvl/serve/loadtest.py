"""`qwenvl bench-serve`: closed-loop load on a running OpenAI-compatible server.

For each concurrency level C, C workers send requests back to back until N have completed. Every
request streams (with usage) so the time to the first token is measured as the client sees it.
Reports requests/s, output tokens/s, latency / TTFT percentiles and the worst decode stall (the longest
wait between two tokens of one stream: what another request's prefill costs the running ones) per level.
`--unique-images` gives every request its own image (no prefix-cache hits: every arrival pays the vision
tower and prefill); `--second-turn` follows each request with a second question about the same image and
reports that turn's TTFT and cached prompt tokens next to the first's.

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
    p.add_argument("--unique-images", action="store_true",
                   help="a different random image per request (with --image-size), so no prefix-cache hits")
    p.add_argument("--second-turn", action="store_true",
                   help="follow each request with a second turn on the same conversation; report its TTFT")
    p.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    p.add_argument("--json", dest="json_out", help="also write the results to this JSON file")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def image_data_uri(args, seed: int = 0) -> str | None:
    if args.image:
        with open(args.image, "rb") as f:
            data = f.read()
        mime = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"
    if args.image_size:
        import numpy as np
        from PIL import Image

        pixels = np.random.default_rng(seed).integers(0, 256, (args.image_size, args.image_size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        return f"data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"
    return None


async def one_request(client, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first = last = None
    stall = 0.0
    tokens = cached = 0
    text = []
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
            piece = "".join(c.get("delta", {}).get("content") or "" for c in obj.get("choices", []))
            if piece:
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    stall = max(stall, now - last)
                last = now
                text.append(piece)
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
                cached = (obj["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    end = time.perf_counter()
    return {"ok": True, "latency": end - start, "ttft": (first or end) - start, "tokens": tokens, "stall": stall,
            "cached": cached, "text": "".join(text)}


def with_image(body: dict, uri: str | None) -> dict:
    if uri is None:
        return body
    msg = body["messages"][0]
    content = [{"type": "image_url", "image_url": {"url": uri}}] + msg["content"][1:]
    return {**body, "messages": [{**msg, "content": content}]}


async def run_level(client, url: str, body: dict, concurrency: int, total: int, args=None, on_done=None) -> dict:
    results: list[dict] = []
    second: list[dict] = []
    counter = iter(range(total))

    async def worker():
        for i in counter:
            b = body
            if args is not None and args.unique_images and (args.image_size or args.image):
                b = with_image(body, image_data_uri(args, seed=1000 * concurrency + i + 1))
            r = await one_request(client, url, b)
            results.append(r)
            if on_done:
                on_done(concurrency, r)
            if args is not None and args.second_turn and r["ok"]:
                follow = b["messages"] + [{"role": "assistant", "content": r["text"]},
                                          {"role": "user", "content": "Say more about it."}]
                second.append(await one_request(client, url, {**b, "messages": follow}))

    start = time.perf_counter()
    import asyncio

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    lat = [r["latency"] for r in ok]
    ttft = [r["ttft"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    both = ok + [r for r in second if r["ok"]]
    row = {"concurrency": concurrency, "requests": total, "failed": len(results) - len(ok), "wall_s": wall,
           "req_per_s": len(ok) / wall, "out_tok_per_s": tokens / wall, "tokens": tokens,
           "latency_p50": percentile(lat, 50), "latency_p90": percentile(lat, 90), "latency_p99": percentile(lat, 99),
           "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
           "stall_max": max((r["stall"] for r in both), default=float("nan")),
           "stall_p99": percentile([r["stall"] for r in both], 99),
           "errors": sorted({str(r.get("error")) for r in results + second if not r["ok"]})[:3]}
    if second:
        ok2 = [r for r in second if r["ok"]]
        row["failed"] += len(second) - len(ok2)
        row.update(turn2_ttft_p50=percentile([r["ttft"] for r in ok2], 50),
                   turn2_ttft_p99=percentile([r["ttft"] for r in ok2], 99),
                   turn2_cached_tokens_mean=sum(r["cached"] for r in ok2) / max(len(ok2), 1))
    return row


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
        # warm-up (first-call allocations); text only with --second-turn, so that the first turn it measures
        # does not find its image in the prefix cache
        warm = body
        if args.second_turn:
            warm = {**body, "messages": [{"role": "user", "content": [{"type": "text", "text": args.prompt}]}]}
        await one_request(client, url, warm)
        return [await run_level(client, url, body, c, args.requests, args, on_done) for c in levels]


def format_table(rows: list[dict]) -> str:
    turn2 = any("turn2_ttft_p50" in r for r in rows)
    head = ("| concurrency | requests | failed | req/s | output tok/s | latency p50 / p90 / p99 (s) "
            "| TTFT p50 / p99 (s) | worst stall (s) |" + (" turn-2 TTFT p50 / p99 (s) | turn-2 cached |" if turn2 else "")
            + "\n|---|---|---|---|---|---|---|---|" + ("---|---|" if turn2 else ""))
    lines = [head]
    for r in rows:
        line = (f"| {r['concurrency']} | {r['requests']} | {r['failed']} | {r['req_per_s']:.2f} | "
                f"{r['out_tok_per_s']:.1f} | {r['latency_p50']:.3f} / {r['latency_p90']:.3f} / "
                f"{r['latency_p99']:.3f} | {r['ttft_p50']:.3f} / {r['ttft_p99']:.3f} | {r['stall_max']:.3f} |")
        if turn2:
            line += (f" {r.get('turn2_ttft_p50', float('nan')):.3f} / {r.get('turn2_ttft_p99', float('nan')):.3f} | "
                     f"{r.get('turn2_cached_tokens_mean', 0):.0f} |")
        lines.append(line)
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
