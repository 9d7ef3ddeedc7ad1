"""Run a tiny random Qwen2 through vLLM's engine on :class:`wna16_omni_cpu.worker.CpuARWorker` and through
transformers; print both greedy continuations as JSON. A script (``python ar_engine.py FOLDER``): the engine runs in
its own process, apart from the diffusion engines of the other tests.

Two things vLLM-Omni's stage pipeline supplies and a plain vLLM engine does not, supplied here: vLLM-Omni's runner
passes Omni keyword arguments to the model's ``forward`` (Omni models take them; :class:`OmniKwargsQwen2` ignores
them) and reads ``OmniModelConfig.engine_output_type`` (:class:`PlainEngineARWorker` sets it to ``None``: text).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

from wna16_omni_cpu.worker import CpuARWorker

PROMPT = [1, 2, 3, 4]
NEW_TOKENS = 4


class OmniKwargsQwen2(Qwen2ForCausalLM):
    """vLLM's Qwen2, taking (and ignoring) the keyword arguments vLLM-Omni's runner adds for Omni models."""

    def forward(self, input_ids: Any, positions: Any, intermediate_tensors: Any = None, inputs_embeds: Any = None,
                **omni: Any) -> Any:  # fmt: skip
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds)


class PlainEngineARWorker(CpuARWorker):
    """:class:`CpuARWorker` under a plain vLLM ``ModelConfig``, given the field vLLM-Omni's config has."""

    def init_device(self) -> None:
        object.__setattr__(self.vllm_config.model_config, "engine_output_type", None)
        super().init_device()


def main(folder: str) -> None:
    import torch
    from transformers import Qwen2Config
    from transformers import Qwen2ForCausalLM as HfQwen2
    from vllm import LLM, ModelRegistry, SamplingParams
    from vllm.inputs import TokensPrompt

    torch.manual_seed(0)
    model = HfQwen2(
        Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    )  # fmt: skip
    model.save_pretrained(folder)
    config_path = os.path.join(folder, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["architectures"] = ["OmniKwargsQwen2"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    ModelRegistry.register_model("OmniKwargsQwen2", "ar_engine:OmniKwargsQwen2")
    llm = LLM(model=folder, skip_tokenizer_init=True, dtype="float32", enforce_eager=True, max_model_len=64,
              max_num_seqs=2, gpu_memory_utilization=0.3, worker_cls="ar_engine.PlainEngineARWorker")  # fmt: skip
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=PROMPT)], params, use_tqdm=False)
    runner = llm.collective_rpc(lambda worker: type(worker.model_runner).__name__)[0]
    with torch.no_grad():
        reference = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False)
    result = {"runner": runner, "vllm": list(out[0].outputs[0].token_ids), "transformers": reference[0, 4:].tolist()}
    print("AR_ENGINE " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
