"""Cross-attention with the Forget-Me-Not re-steering term: a PyTorch reference and Triton kernels.

Imports torch (and triton lazily) only; nothing from the application.

>>> out, resteer = resteer_attention(q, k, v, concept_mask)  # doctest: +SKIP
"""

from fmn_kernels.backends import (
    Backend,
    BackendUnavailableError,
    resteer_attention,
    select_backend,
    valid_names,
)
from fmn_kernels.reference import resteer_attention_eager, resteer_attention_reference

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "resteer_attention",
    "resteer_attention_eager",
    "resteer_attention_reference",
    "select_backend",
    "valid_names",
]
