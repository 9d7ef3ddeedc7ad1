"""Runtimes that serve WnA16 checkpoints through wna16's backends (each an optional extra).

- :mod:`wna16.integrations.vllm`: the ``wna16`` quantization method of vLLM (``pip install wna16[vllm]``), registered
  by the ``vllm.general_plugins`` entry point; vLLM-Omni picks it up the same way.

Nothing here is imported by ``import wna16``: an integration imports its runtime, which core must not require.
"""
