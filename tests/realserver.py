"""A real OpenAI-compatible server for tests: the llama.cpp server serving a tiny model.

The model is a llama with random weights written with the `gguf` package: two layers,
64-wide, a byte-level BPE vocabulary (every byte is a token, plus a few merges and the
chat markers) and a chat template, so the server really tokenizes, really applies the
template, really counts usage, really enforces JSON grammars and really overflows its
context window. Its answers are noise; tests only rely on what a server guarantees.
No vocabulary file ships inside the installed llama.cpp package, so the vocabulary is
built here (valid for llama.cpp's BPE tokenizer: GPT-2's byte-to-character mapping).

Needs the `realserver` extra (`pip install -e '.[realserver]'`); tests using the
fixtures SKIP, saying so, when it is missing. `RealServer` starts
`python -m llama_cpp.server` on 127.0.0.1 in a subprocess (one request at a time, as
the server serves them) and can kill it, for tests of a server dying mid-run.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODEL_ALIAS = "crew-tiny"
"""The model name the server lists and answers to."""
N_CTX = 16384
"""The server's context window (tokens): room for a supervisor's prompt (byte by byte)
plus the longest plan the schema allows, whitespace included (about 9,000 tokens)."""
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")
MERGES = ("e s", "Ġ d", "Ġ l", "e n", "o n", "r e", "Ġ p", "a n", "t i", "o u")
"""A few merges: a real BPE vocabulary merges; these make some pairs one token."""

STARTUP_GRACE_S = 180.0
"""How long the server may take to load before the fixture gives up (setup, not test)."""


def missing_reason() -> str | None:
    """Why the real-server tests cannot run here, or None when they can."""
    for module in ("llama_cpp", "gguf", "uvicorn", "fastapi", "sse_starlette"):
        if importlib.util.find_spec(module) is None:
            return (
                f"the realserver extra is not installed (no module {module!r}): "
                "pip install -e '.[realserver]'"
            )
    return None


def byte_tokens() -> list[str]:
    """GPT-2's printable stand-in for each of the 256 bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    extra = 0
    mapping: dict[int, str] = {}
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return [mapping[b] for b in range(256)]


def write_tiny_model(path: Path, *, seed: int = 1234) -> Path:
    """Write the tiny random llama to `path` (a .gguf file) and return it."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = byte_tokens()
    merged = [a + b for a, b in (m.split(" ") for m in MERGES)]
    vocab = [*tokens, *merged, *SPECIAL_TOKENS]
    types = [gguf.TokenType.NORMAL] * (len(tokens) + len(merged))
    types += [gguf.TokenType.CONTROL] * len(SPECIAL_TOKENS)
    n_vocab, n_embd, n_ff, n_head, n_layer = len(vocab), 64, 128, 4, 2

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("crew tiny random llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types(types)
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(vocab.index("<|im_start|>"))
    writer.add_eos_token_id(vocab.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    def norm() -> Any:
        return np.ones(n_embd, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(n_vocab, n_embd))
    for layer in range(n_layer):
        prefix = f"blk.{layer}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", norm())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{name}.weight", weight(n_embd, n_embd))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", norm())
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weight(n_ff, n_embd))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weight(n_embd, n_ff))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weight(n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RealServer:
    """`python -m llama_cpp.server` serving the tiny model on 127.0.0.1."""

    def __init__(self, model: Path, log_path: Path) -> None:
        self.model = model
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What OPENAI_BASE_URL should be set to."""
        return self.url + "/v1"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.model), "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_batch", "512",
            "--seed", "7", "--verbose", "false",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        deadline = time.monotonic() + STARTUP_GRACE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited at start:\n{self.log()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.base_url + "/models", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the llama.cpp server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]

    def kill(self) -> None:
        """Kill the server at once (SIGKILL): in-flight requests get a dropped connection."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /v1/chat/completions directly (tests of the server's own behaviour)."""
        request = urllib.request.Request(
            self.base_url + "/chat/completions",
            data=json.dumps({"model": MODEL_ALIAS, **body}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode("utf-8", errors="replace")
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, {"raw": text}


def tiny_model(folder: Path) -> Path:
    """The tiny model in `folder` (written once); skips the test without the extra."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    path = folder / "tiny-llama.gguf"
    return path if path.exists() else write_tiny_model(path)


@contextlib.contextmanager
def serving(model: Path, log_path: Path) -> Iterator[RealServer]:
    """A started server, killed at the end whatever happened."""
    server = RealServer(model, log_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()
