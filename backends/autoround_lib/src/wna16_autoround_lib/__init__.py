"""wna16 backend on auto-round-lib (``auto_round_kernel``), the weight-only CPU kernel library vLLM and auto-round
use for AutoRound checkpoints on CPU: :mod:`wna16_autoround_lib.backend`."""

from wna16_autoround_lib.backend import AutoRoundLibBackend

__all__ = ["AutoRoundLibBackend"]
