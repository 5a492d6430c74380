"""The settings of a forget job (`ForgetConfig`) and their measured defaults.

Without torch: the CLI builds its options from these fields before any command runs, and a
command that never trains must not pay for importing torch (`fmn_desktop.lazy`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from fmn_desktop.knobs import knob, resolve_by_mode
from fmn_desktop.prompts.templates import KINDS
from fmn_desktop.prompts.tokens import POSITION_MODES

LAYER_WEIGHTINGS = ("pixels", "uniform")
PRESERVE_MODES = ("output", "maps")
# "squares" (the paper's, fused in the kernel) can fall by spreading attention over many marked
# columns without moving it off them; the per-row "mass" terms cannot (measured: METHOD_NOTES).
RESTEER_TERMS = ("squares", "mass", "logmass")

# Defaults that depend on the mode (measured: docs/research/METHOD_NOTES.md). Faithful mode's
# anchor term needs about 70 steps; fast mode optimises each layer on its own for 35. The
# preservation weight was measured with the anchor term (6) and in fast mode (3); the anchor
# term was not measured in fast mode, so it is off there.
MODE_DEFAULTS = {
    "steps": {"faithful": 70, "fast": 35},
    "preserve_weight": {"faithful": 6.0, "fast": 3.0},
    "anchor_weight": {"faithful": 3.0, "fast": 0.0},
}
FAITHFUL_STEPS = MODE_DEFAULTS["steps"]["faithful"]
FAST_STEPS = MODE_DEFAULTS["steps"]["fast"]

DEFAULT_PRESERVE_PROMPTS = [
    "a photo of a dog",
    "a photo of a house",
    "a landscape painting",
    "a portrait of a woman",
    "a red car on a street",
    "a bowl of fruit",
    "a city at night",
    "a photo of a cat",
]


@dataclass
class ForgetConfig:
    """Hyper-parameters of a forget job; every field is stored in the patch metadata.

    Fields left None take their mode's default (`MODE_DEFAULTS`) when the config is made.
    """

    # What to forget
    concepts: list[str] = knob(
        MISSING,
        "concept text as it appears in prompts (repeat for several at once)",
        group="what to forget",
        flag="--concept",
        many=True,
    )
    concept_kind: str = knob(
        "object",
        "picks the prompt templates",
        group="what to forget",
        choices=KINDS,
    )
    templates: list[str] | None = knob(
        None,
        "prompt template with {} for the concept (repeatable; replaces the kind's)",
        group="what to forget",
        flag="--template",
        many=True,
    )
    # Where and how
    mode: str = knob(
        "faithful",
        "faithful: through the whole UNet, as the paper; fast: each layer's K on "
        "cached queries, no UNet backward",
        group="method",
        choices=("faithful", "fast"),
    )
    trainable: str = knob(
        "kv",
        "what changes: attn2 K/V, all of attn2, or the whole UNet",
        group="method",
        choices=("kv", "attn2", "unet"),
    )
    lora_rank: int | None = knob(
        None,
        "train a LoRA of this rank instead of dense deltas",
        group="method",
    )
    positions: str = knob(
        "concept+following+eot",
        "token positions re-steered; 'following' is every position "
        "after the concept, which a causal text encoder fills with it",
        group="method",
        choices=POSITION_MODES,
    )
    layer_weighting: str = "pixels"
    backend: str | None = None  # attention backend (fmn_kernels); None: the best available
    # Loss terms and their weights
    term: str = knob(
        "squares",
        "re-steering term: the paper's sum of squared probabilities on the marked "
        "columns ('squares'), or per pixel the marked mass squared / -log(1 - mass)",
        group="loss terms",
        choices=RESTEER_TERMS,
    )
    resteer_weight: float = knob(
        1.0,
        "weight of the paper's re-steering term; 0 trains the anchor term alone, e.g. to "
        "push 'knight' away from 'Gorvak'",
        group="loss terms",
        bounds="nonneg",
    )
    anchor: str = knob(
        "",
        "what the concept's outputs are pulled towards: each forget prompt with the "
        "concept replaced by TEXT, e.g. 'a person' (default: the concept removed)",
        group="loss terms",
        metavar="TEXT",
    )
    anchor_weight: float | None = knob(
        None,
        "weight of the anchor term (each layer's output for a forget prompt pulled to "
        "the output for the anchor prompt); 0 gives the paper's re-steering alone",
        group="loss terms",
        by_mode=MODE_DEFAULTS["anchor_weight"],
        bounds="nonneg",
    )
    anchor_guidance: float = knob(
        3.0,
        "how far past the anchor, away from the concept, the target lies; negative: past "
        "the concept, away from the anchor",
        group="loss terms",
    )
    preserve_weight: float | None = knob(
        None,
        "weight of the preservation term (other prompts held in place); 0 turns it off",
        group="loss terms",
        by_mode=MODE_DEFAULTS["preserve_weight"],
        bounds="nonneg",
    )
    preserve_mode: str = knob(
        "output",
        "what the preservation term holds for other prompts: attn2 outputs or attention maps",
        group="loss terms",
        choices=PRESERVE_MODES,
    )
    preserve_prompts: list[str] | None = knob(
        None,
        "prompt to hold in place (repeatable; default: the model's world on the embedded "
        "model, a built-in set elsewhere)",
        group="loss terms",
        flag="--preserve-prompt",
        many=True,
    )
    protect_energy: float = 0.0  # >0: K/V deltas vanish on this share of preservation embeddings
    # Reference images
    reference_dir: str | None = knob(
        None,
        "folder of reference images (default: generated by the model itself)",
        group="references",
        flag="--references",
        metavar="DIR",
    )
    num_references: int = knob(
        16,
        "images to generate when no folder is given",
        group="references",
    )
    reference_steps: int = 20
    guidance_scale: float = 5.0
    # Optimiser
    steps: int | None = knob(
        None,
        "optimisation steps (fast mode: per layer)",
        group="optimiser",
        by_mode=MODE_DEFAULTS["steps"],
    )
    lr: float | None = knob(
        None,
        "learning rate (default: 1e-2 K/V, 3e-2 LoRA, 2e-6 whole UNet)",
        group="optimiser",
        bounds="positive",
    )
    batch_size: int = knob(8, "samples per step", group="optimiser")
    grad_clip: float = 1.0
    weight_decay: float = 0.01
    seed: int = knob(0, "random seed of the job", group="optimiser", bounds="seed")

    def __post_init__(self) -> None:
        if not self.concepts or any(not c.strip() for c in self.concepts):
            raise ValueError("give at least one non-empty concept")
        if self.positions not in POSITION_MODES:
            raise ValueError(
                f"unknown positions {self.positions!r}; valid: {', '.join(POSITION_MODES)}"
            )
        if self.layer_weighting not in LAYER_WEIGHTINGS:
            raise ValueError(f"unknown layer weighting {self.layer_weighting!r}")
        if self.preserve_mode not in PRESERVE_MODES:
            raise ValueError(
                f"unknown preservation mode {self.preserve_mode!r}; valid: {', '.join(PRESERVE_MODES)}"
            )
        if self.term not in RESTEER_TERMS:
            raise ValueError(f"unknown term {self.term!r}; valid: {', '.join(RESTEER_TERMS)}")
        if self.mode not in ("faithful", "fast"):
            raise ValueError(f"unknown mode {self.mode!r}; valid: faithful, fast")
        if self.mode == "fast" and self.term != "squares":
            raise ValueError("fast mode optimises the paper's 'squares' term only")
        resolve_by_mode(self, self.mode)
        if self.anchor_weight < 0 or self.preserve_weight < 0 or self.resteer_weight < 0:
            raise ValueError("re-steering, anchor and preservation weights must be >= 0")
        if self.resteer_weight == 0 and self.anchor_weight == 0:
            raise ValueError("re-steering and anchor weights are both 0: nothing to train")
        if self.steps < 1 or self.batch_size < 1 or self.num_references < 1:
            raise ValueError("steps, batch size and number of references must be positive")

    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else default_lr(self.trainable, self.lora_rank)


def default_lr(trainable: str, lora_rank: int | None) -> float:
    """The paper's 2e-6 for the whole UNet; dense K/V 1e-2 and LoRA 3e-2, measured on the
    embedded model (docs/research/METHOD_NOTES.md): at 3e-4..1e-3 the concept's attention fell to a
    quarter yet the concept was still drawn. "attn2" uses the K/V rate (not tuned apart)."""
    if trainable == "unet":
        return 2e-6
    return 3e-2 if lora_rank else 1e-2
