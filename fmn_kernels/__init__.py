"""Cross-attention with the Forget-Me-Not re-steering term: a PyTorch reference and Triton kernels.

Imports torch (and triton lazily) only; nothing from the application.
"""

from fmn_kernels.reference import resteer_attention_reference


def resteer_attention(q, k, v, concept_mask=None, scale=None, backend=None):
    """Attention output and per-(sample, head) re-steering term; see `resteer_attention_reference`.

    `backend` selects the implementation by name; until the Triton backend lands every call
    uses the reference.
    """
    return resteer_attention_reference(q, k, v, concept_mask, scale)


__all__ = ["resteer_attention", "resteer_attention_reference"]
