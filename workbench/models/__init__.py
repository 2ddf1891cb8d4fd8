"""Model registry, loading, and the hooked backends."""

from workbench.models.backends import BACKENDS, Backend, bare_forward, make_backend
from workbench.models.registry import (
    REGISTRY,
    hook_widths,
    load_hf_model,
    load_tokenizer,
    model_shape,
    resolve_model_dir,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "REGISTRY",
    "bare_forward",
    "hook_widths",
    "load_hf_model",
    "load_tokenizer",
    "make_backend",
    "model_shape",
    "resolve_model_dir",
]
