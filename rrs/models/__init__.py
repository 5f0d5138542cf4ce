"""Model adapters: one interface (`LALMAdapter`) over the paper's three Qwen audio LLMs
and the project's mini-LALM. `load_adapter(id_or_folder)` is the entry point."""
from .base import REGISTRY, LALMAdapter, ModelNotAvailableError, ModelSpec, load_adapter, weights_fingerprint

__all__ = ["REGISTRY", "LALMAdapter", "ModelNotAvailableError", "ModelSpec", "load_adapter", "weights_fingerprint"]
