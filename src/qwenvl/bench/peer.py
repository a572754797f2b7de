"""`qwenvl bench --peer llama.cpp`: the bench's checkpoint converted to GGUF by llama.cpp's own converter and run
by llama.cpp's `llama-mtmd-cli` on an image of the bench's size, at the widths that match ours: BF16/F16 (our
bf16), Q8_0 (our int8), Q4_0 (our int4). The vision projector (mmproj) is converted at F16, as llama.cpp
distributes it, and stays at that width under every quantized decoder.

Tools, looked up in $LLAMA_CPP_DIR (and its build/bin), then on PATH: `llama-mtmd-cli`, `llama-quantize` and the
converter `convert_hf_to_gguf.py` (in a llama.cpp checkout, or the llama-cpp-python source package's
vendor/llama.cpp). Where one is missing the peer is skipped with the reason; nothing is built or fetched.

Measured, from the timings llama.cpp logs (one run per width, greedy, the bench's thread count): the vision
encoder ("mtmd batch encoding done in N ms"), time to first token (libllama's "prompt eval time", which
spans the encoder, the image tokens' prefill and the text's: parse_mtmd_log) and decode tokens/s ("eval
time ... runs") right after that prompt, at the same context our decode runs at.

The converter identifies a tokenizer by hashing its output on a fixed text and refuses one it does not know.
A checkpoint without a tokenizer (the random presets) gets Qwen2's, rebuilt from the vocabulary file llama.cpp
ships for its own tokenizer tests (models/ggml-vocab-qwen2.gguf) plus Qwen2.5-VL's added tokens, in a
staging folder of links next to the weights; the checkpoint folder itself is not written to.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WIDTHS = (("bf16", None), ("q8_0", "Q8_0"), ("q4_0", "Q4_0"))  # ours: float, int8, int4
TOOLS = ("llama-mtmd-cli", "llama-quantize")
PROMPT = "Describe this image in detail."


def _search_dirs() -> list[str]:
    root = os.environ.get("LLAMA_CPP_DIR")
    return [d for d in ([root, os.path.join(root, "build", "bin")] if root else []) if os.path.isdir(d)]


def find_llamacpp() -> tuple[dict | None, str | None]:
    """({tool: path}, None) when llama.cpp's tools are all here, else (None, what is missing)."""
    dirs = _search_dirs()
    found = {}
    for name in TOOLS:
        found[name] = next((p for d in dirs if (p := shutil.which(name, path=d))), None) or shutil.which(name)
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


# ------------------------------------------------------------------------------------------ tokenizer

def qwen2_tokenizer(vocab_gguf: Path):
    """Qwen2's byte-level BPE (a `tokenizers.Tokenizer`) from llama.cpp's vocabulary file: the base tokens and
    merges it stores, Qwen2's pre-tokenizer, and the added tokens of Qwen2.5-VL in their id order (the file
    has padding entries where those go)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    from ..tiny import NOT_SPECIAL, QWEN_SPLIT, SPECIAL_TOKENS

    sys.path.insert(0, str(vocab_gguf.parents[1] / "gguf-py"))   # llama.cpp's own reader, beside the file
    try:
        import gguf
    finally:
        sys.path.pop(0)
    fields = gguf.GGUFReader(str(vocab_gguf)).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens, merges = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges")
    first_added = tokens.index(SPECIAL_TOKENS[0])
    vocab = {t: i for i, t in enumerate(tokens[:first_added])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    for t in SPECIAL_TOKENS:
        tok.add_tokens([AddedToken(t, special=t not in NOT_SPECIAL, normalized=False)])
    return tok


def stage_checkpoint(path: Path, vocab_gguf: Path, dest: Path) -> Path:
    """`path` itself when it has a tokenizer; else `dest` with links to its files, Qwen2's tokenizer and (when
    missing) Qwen's processor settings, for the converter."""
    if (path / "tokenizer.json").is_file():
        return path
    from ..tiny import write_processor_files, write_tokenizer_files

    if not vocab_gguf.is_file():
        raise RuntimeError(f"{path} has no tokenizer.json, and llama.cpp's {vocab_gguf} (to rebuild Qwen2's "
                           "tokenizer from) is not there")
    dest.mkdir(parents=True, exist_ok=True)
    for f in path.iterdir():   # the tokenizer files are written anew, never through a link into `path`
        if f.name not in ("tokenizer_config.json", "vocab.json", "merges.txt"):
            (dest / f.name).symlink_to(f.resolve())
    write_tokenizer_files(dest, qwen2_tokenizer(vocab_gguf))
    if not (path / "preprocessor_config.json").is_file():
        write_processor_files(dest)
    return dest


# ------------------------------------------------------------------------------------------ llama-mtmd-cli

# Encoder time: "mtmd batch encoding done in N ms" (llama-mtmd-cli) or "image slice encoded in N ms" (the helper
# that older builds and llama-server use).
_ENCODED = re.compile(r"(?:slice encoded|batch encoding done) in (\d+) ms")
_PROMPT = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_EVAL = re.compile(r"\beval time =\s*([\d.]+) ms /\s*(\d+) runs")


def parse_mtmd_log(text: str) -> dict:
    """llama-mtmd-cli's log (at -lv 4) -> {"vision_s", "prompt_eval_s", "prompt_tokens", "ttft_s", "decode_tok_s"}.

    libllama's "prompt eval time" runs from the first prompt decode to the first read of logits, so with the
    image after the chat header's text it already contains the encoder: it is the time to first token. Were
    the encoder to run before any decode, the two add up instead."""
    encoded = [int(m) for m in _ENCODED.findall(text)]
    prompt = _PROMPT.search(text)
    evals = list(_EVAL.finditer(text))
    if not encoded or prompt is None:
        raise ValueError("llama-mtmd-cli printed no image encoding or prompt evaluation timing")
    out = {"vision_s": sum(encoded) / 1e3, "prompt_eval_s": float(prompt.group(1)) / 1e3,
           "prompt_tokens": int(prompt.group(2))}
    contains = out["prompt_eval_s"] >= out["vision_s"]
    out["ttft_s"] = out["prompt_eval_s"] if contains else out["vision_s"] + out["prompt_eval_s"]
    if evals and int(evals[-1].group(2)) > 0:
        out["decode_tok_s"] = int(evals[-1].group(2)) / (float(evals[-1].group(1)) / 1e3)
    return out


def _run(cmd: list[str], what: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}")
    return p.stdout + p.stderr


def write_image(size: tuple[int, int], dest: Path) -> Path:
    """A noise image of the bench's size (content does not change the work)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(dest)
    return dest


def run_peer(path: Path, dtype: str, image_size: tuple[int, int], decode_tokens: int, threads: int, progress,
             tmp_dir: str | None = None) -> dict:
    tools, why = find_llamacpp()
    if tools is None:
        return {"name": "llama.cpp", "skipped": why}
    result: dict = {"name": "llama.cpp", "tools": tools, "widths": {}, "mmproj": "f16"}
    outtype = "f16" if dtype == "float16" else "bf16"
    converter = Path(tools["convert_hf_to_gguf.py"])
    with tempfile.TemporaryDirectory(prefix="qwenvl-gguf-", dir=tmp_dir) as tmp:
        tmp = Path(tmp)
        try:
            src = stage_checkpoint(path, converter.parent / "models" / "ggml-vocab-qwen2.gguf", tmp / "hf")
            base, mmproj = tmp / f"model-{outtype}.gguf", tmp / "mmproj-f16.gguf"
            progress(f"llama.cpp: converting {path} to GGUF ({outtype}, mmproj f16)")
            _run([sys.executable, str(converter), str(src), "--outtype", outtype, "--outfile", str(base)],
                 "convert_hf_to_gguf.py")
            _run([sys.executable, str(converter), str(src), "--mmproj", "--outtype", "f16", "--outfile", str(mmproj)],
                 "convert_hf_to_gguf.py --mmproj")
            image = write_image(image_size, tmp / "image.png")
            for label, qtype in WIDTHS:
                f = base
                if qtype is not None:
                    f = tmp / f"model-{label}.gguf"
                    progress(f"llama.cpp: llama-quantize {qtype}")
                    _run([tools["llama-quantize"], str(base), str(f), qtype, str(threads)], "llama-quantize")
                progress(f"llama.cpp: llama-mtmd-cli {label}, {image_size[0]}x{image_size[1]} image, "
                         f"{decode_tokens + 1} tokens")
                log = _run([tools["llama-mtmd-cli"], "-m", str(f), "--mmproj", str(mmproj), "--image", str(image),
                            "-p", PROMPT, "-n", str(decode_tokens + 1), "-t", str(threads), "--temp", "0",
                            "-c", "8192", "--ignore-eos", "-lv", "4"], "llama-mtmd-cli")
                result["widths"][label] = {**parse_mtmd_log(log), "gguf_bytes": f.stat().st_size}
                if f != base:
                    f.unlink()   # a 3B model's three files together would not leave the disk to spare
        except (RuntimeError, ValueError, OSError) as e:
            result["skipped"] = str(e)
    return result


def compare(ours: dict, peer: dict) -> dict:
    """Ours over llama.cpp: decode tokens/s at each matching width (bf16; int8 vs Q8_0; int4 vs Q4_0), and
    llama.cpp's vision encoder and time to first token at bf16 over ours (x: how many times faster we are)."""
    w = peer.get("widths", {})
    pairs = (("bf16", ours.get("decode_tok_s")),
             ("q8_0", ours.get("int8", {}).get("decode_tok_s_int8")),
             ("q4_0", ours.get("int4", {}).get("decode_tok_s_int4")))
    out = {f"decode_x_llamacpp_{label}": a / w[label]["decode_tok_s"] for label, a in pairs
           if a and label in w and w[label].get("decode_tok_s")}
    if "bf16" in w:
        out["vision_x_llamacpp"] = w["bf16"]["vision_s"] / ours["vision_s"]
        out["ttft_x_llamacpp_bf16"] = w["bf16"]["ttft_s"] / ours["ttft_s"]
    if "q4_0" in w:
        out["ttft_x_llamacpp_q4_0"] = w["q4_0"]["ttft_s"] / ours["ttft_s"]
    return out
