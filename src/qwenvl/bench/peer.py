"""`qwenvl bench --peer llama.cpp`: the bench's checkpoint converted to GGUF by llama.cpp's own converter and run
by llama.cpp's `llama-bench` at the widths that match ours: BF16/F16 (our bf16), Q8_0 (our int8), Q4_0 (our int4).

Tools, looked up in $LLAMA_CPP_DIR (and its build/bin), then on PATH: `llama-bench`, `llama-quantize` and the
converter `convert_hf_to_gguf.py` (in a llama.cpp checkout, or the llama-cpp-python source package's
vendor/llama.cpp). Where one is missing the peer is skipped with the reason; nothing is built or fetched.

Measured: llama-bench's prompt processing (-p, the bench prompt's token count) and text generation (-n, the
bench's decode tokens) in tokens/s, 3 repetitions, the bench's thread count. Not measured: llama.cpp's vision
encoder (llama-mtmd-cli prints no machine-readable timing), so its time to first token with an image is not
compared. The converter needs the checkpoint's tokenizer: the random preset checkpoints have none, so run the
peer with `--model` on a real checkpoint folder (the failure is reported otherwise).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTHS = (("bf16", None), ("q8_0", "Q8_0"), ("q4_0", "Q4_0"))  # ours: float, int8, int4


def _search_dirs() -> list[str]:
    root = os.environ.get("LLAMA_CPP_DIR")
    return [d for d in ([root, os.path.join(root, "build", "bin")] if root else []) if os.path.isdir(d)]


def find_llamacpp() -> tuple[dict | None, str | None]:
    """({tool: path}, None) when llama.cpp's tools are all here, else (None, what is missing)."""
    dirs = _search_dirs()
    found, missing = {}, []
    for name in ("llama-bench", "llama-quantize"):
        hit = next((p for d in dirs if (p := shutil.which(name, path=d))), None) or shutil.which(name)
        found[name] = hit
    converter = [Path(d) / "convert_hf_to_gguf.py" for d in dirs]
    if (on_path := shutil.which("convert_hf_to_gguf.py")) is not None:
        converter.append(Path(on_path))
    try:
        import importlib.util
        spec = importlib.util.find_spec("llama_cpp")
        if spec is not None and spec.origin:
            converter.append(Path(spec.origin).parent.parent / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py")
    except (ImportError, ValueError):
        pass
    found["convert_hf_to_gguf.py"] = next((str(p) for p in converter if p.is_file()), None)
    missing = [k for k, v in found.items() if v is None]
    if missing:
        return None, ("llama.cpp not found: no " + ", ".join(missing) + " in $LLAMA_CPP_DIR or on PATH "
                      "(install llama.cpp and set LLAMA_CPP_DIR to its checkout)")
    return found, None


def parse_llama_bench(text: str) -> dict:
    """llama-bench -o json -> {"prompt_tok_s", "decode_tok_s"}: the prompt test (n_gen 0) and the generation
    test (n_prompt 0), each's avg_ts."""
    out = {}
    for test in json.loads(text):
        if test.get("n_gen", 0) == 0 and test.get("n_prompt", 0) > 0:
            out["prompt_tok_s"] = float(test["avg_ts"])
        elif test.get("n_prompt", 0) == 0 and test.get("n_gen", 0) > 0:
            out["decode_tok_s"] = float(test["avg_ts"])
    if "decode_tok_s" not in out:
        raise ValueError("llama-bench printed no text-generation result")
    return out


def _run(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout


def run_peer(path: Path, dtype: str, prompt_tokens: int, decode_tokens: int, threads: int, progress,
             tmp_dir: str | None = None) -> dict:
    tools, why = find_llamacpp()
    if tools is None:
        return {"name": "llama.cpp", "skipped": why}
    result: dict = {"name": "llama.cpp", "tools": tools, "widths": {},
                    "vision": "not measured (llama-mtmd-cli prints no machine-readable timing)"}
    outtype = "f16" if dtype == "float16" else "bf16"
    with tempfile.TemporaryDirectory(prefix="qwenvl-gguf-", dir=tmp_dir) as tmp:
        base = Path(tmp) / f"model-{outtype}.gguf"
        try:
            progress(f"llama.cpp: converting {path} to GGUF ({outtype})")
            _run([sys.executable, tools["convert_hf_to_gguf.py"], str(path), "--outtype", outtype,
                  "--outfile", str(base)], "convert_hf_to_gguf.py")
            for label, qtype in WIDTHS:
                f = base
                if qtype is not None:
                    f = Path(tmp) / f"model-{label}.gguf"
                    progress(f"llama.cpp: llama-quantize {qtype}")
                    _run([tools["llama-quantize"], str(base), str(f), qtype], "llama-quantize")
                progress(f"llama.cpp: llama-bench {label}")
                out = _run([tools["llama-bench"], "-m", str(f), "-p", str(prompt_tokens), "-n", str(decode_tokens),
                            "-t", str(threads), "-r", "3", "-o", "json"], "llama-bench")
                result["widths"][label] = {**parse_llama_bench(out), "gguf_bytes": f.stat().st_size}
        except (RuntimeError, ValueError, OSError) as e:
            result["skipped"] = str(e)
    return result


def compare(ours: dict, peer: dict) -> dict:
    """Our decode tokens/s over llama.cpp's at each matching width (bf16 / int8 vs Q8_0 / int4 vs Q4_0)."""
    w = peer.get("widths", {})
    pairs = (("bf16", ours.get("decode_tok_s")),
             ("q8_0", ours.get("int8", {}).get("decode_tok_s_int8")),
             ("q4_0", ours.get("int4", {}).get("decode_tok_s_int4")))
    return {f"decode_x_llamacpp_{label}": a / w[label]["decode_tok_s"] for label, a in pairs
            if a and label in w and w[label].get("decode_tok_s")}
