"""`fmn forget`, `fmn invert`, `fmn forget-photos`: create forget patches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fmn_desktop.cli.common import (
    UsageError,
    add_config_args,
    cache_args,
    check_out,
    config_from_args,
    fraction,
    load_model,
    model_args,
    nonneg_int,
    out_args,
    phase_printer,
    positive_float,
    positive_int,
    reference_cache_root,
    registry_arg,
    seed_int,
    step_bar,
)

# Option names of earlier releases, still accepted with a deprecation note.
FORGET_RENAMED = {
    "--kind": "concept_kind",
    "--retain-weight": "preserve_weight",
    "--retain-prompt": "preserve_prompts",
    "--preserve": "preserve_mode",
}


def inversion_args(p: argparse.ArgumentParser, steps_flag: str, lr_flag: str) -> None:
    from fmn_desktop.inversion import InversionConfig

    d = InversionConfig.__dataclass_fields__
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images of it")
    p.add_argument(
        "--token",
        default="<subject>",
        help="the new token, one word, e.g. '<zorbu>' (default: %(default)s)",
    )
    p.add_argument(
        "--vectors",
        type=positive_int,
        default=d["num_vectors"].default,
        help="embedding vectors of the token (default: %(default)s)",
    )
    p.add_argument(
        steps_flag,
        dest="inversion_steps",
        type=positive_int,
        default=d["steps"].default,
        help="inversion steps (default: %(default)s)",
    )
    p.add_argument(
        lr_flag,
        dest="inversion_lr",
        type=positive_float,
        default=d["lr"].default,
        help="inversion learning rate (default: %(default)s)",
    )
    p.add_argument(
        "--inversion-batch",
        type=positive_int,
        default=d["batch_size"].default,
        help="images per inversion step (default: %(default)s)",
    )
    p.add_argument(
        "--init-word",
        default=None,
        help="start the vectors at this word's embedding (default: random)",
    )


def inversion_config(args):
    from fmn_desktop.inversion import InversionConfig

    return InversionConfig(
        placeholder=args.token,
        num_vectors=args.vectors,
        steps=args.inversion_steps,
        lr=args.inversion_lr,
        batch_size=args.inversion_batch,
        init_word=args.init_word,
        seed=args.seed,
    )


def add_parsers(sub) -> None:
    from fmn_desktop.attack.config import HardenSettings
    from fmn_desktop.resteer import ForgetConfig

    p = sub.add_parser(
        "forget",
        help="forget a concept: write a patch file",
        description="Re-steer the cross-attention of a concept's tokens towards zero and write "
        "the change as a small patch (kohya LoRA or .diff safetensors).",
        epilog="example: fmn forget ./sd15 --concept 'Van Gogh' --concept-kind style "
        "--out vangogh.safetensors",
    )
    model_args(p)
    add_config_args(p, ForgetConfig, renamed=FORGET_RENAMED)
    p.add_argument(
        "--harden",
        type=nonneg_int,
        default=0,
        metavar="ROUNDS",
        help="adversarial hardening: after forgetting, attack the patch (white-box K/V token "
        "search, no judge needed), forget the word sequences found too, ROUNDS times; each "
        "round costs one more forget job (default: 0, off; docs/research/ATTACK.md)",
    )
    p.add_argument(
        "--harden-spellings",
        type=nonneg_int,
        default=HardenSettings.spellings,
        metavar="N",
        help="with --harden: also forget, each round, the N spelling variants of the name "
        "('Z-orbu', 'Zorbuu', ...) that the patch holds least (default: %(default)s)",
    )
    p.add_argument(
        "--format",
        choices=["auto", "lora", "diff"],
        default="auto",
        help="patch file layout: lora, diff (full deltas), or auto: LoRA when it can hold what "
        "--trainable changes (kv: yes; attn2, unet: biases and 3x3 convolutions, so .diff) "
        "(default: auto)",
    )
    p.add_argument(
        "--export-rank",
        type=positive_int,
        default=None,
        help="LoRA rank when writing dense deltas (default: smallest within 1%% error)",
    )
    out_args(
        p, "patch file to write (.safetensors); may be left out with --register", required=False
    )
    p.add_argument(
        "--evaluate",
        action="store_true",
        help="score the patch (M-Score, retention) on a model with a judge, into its metadata",
    )
    p.add_argument("--register", action="store_true", help="add the patch to the registry")
    p.add_argument("--tag", action="append", default=[], help="registry tag (repeatable)")
    registry_arg(p, " for --register")
    cache_args(p, registry=False)
    p.set_defaults(handler=cmd_forget)

    p = sub.add_parser(
        "invert",
        help="learn tokens for a subject from a folder of images (textual inversion)",
        description="Learn new token vectors that make the model draw the subject of a "
        "folder of images (only the new embedding rows change), and write them as a "
        "safetensors embedding that diffusers' load_textual_inversion and A1111 read.",
        epilog="example: fmn invert --images photos/ --token '<zorbu>' --out zorbu.safetensors",
    )
    model_args(p)
    inversion_args(p, steps_flag="--steps", lr_flag="--lr")
    p.add_argument("--seed", type=seed_int, default=0)
    out_args(p, "embedding file to write (.safetensors)")
    p.set_defaults(handler=cmd_invert)

    p = sub.add_parser(
        "forget-photos",
        help="forget an identity known from photos: learn tokens, find its names, forget",
        description="Textual inversion on the photos, then the names and preservation "
        "prompts the model reads as the same subject (scored on the photos by the model "
        "itself), then re-steering of the learned tokens and of those names with the photos "
        "as reference images. Writes the patch and the learned tokens.",
        epilog="example: fmn forget-photos --images photos/ --token '<zorbu>' "
        "--out forget-zorbu.safetensors",
    )
    model_args(p)
    inversion_args(p, steps_flag="--inversion-steps", lr_flag="--inversion-lr")
    p.add_argument(
        "--tokens",
        metavar="EMB",
        help="use tokens learned before (an embedding file) instead of learning them",
    )
    p.add_argument(
        "--name",
        action="append",
        default=[],
        help="a name of the subject to forget as well (repeatable)",
    )
    p.add_argument(
        "--no-discover",
        action="store_true",
        help="skip finding the names and preservation prompts that draw the subject",
    )
    p.add_argument(
        "--search-vocabulary",
        action="store_true",
        help="also search the tokenizer's vocabulary for names (slow; finds odd strings)",
    )
    p.add_argument(
        "--threshold",
        type=fraction,
        default=0.5,
        help="share of the learned tokens' effect on the photos at which a prompt counts as "
        "the subject (default: %(default)s)",
    )
    # Re-steering: the forget job's own options; its steps count per re-steered concept
    # (the learned token, each name).
    add_config_args(
        p,
        ForgetConfig,
        only=("steps", "lr", "trainable", "preserve_weight", "preserve_prompts", "seed"),
        renamed=FORGET_RENAMED,
    )
    p.add_argument(
        "--format",
        choices=["auto", "lora", "diff"],
        default="auto",
        help="patch file layout: lora, diff (full deltas), or auto: LoRA when it can hold what "
        "--trainable changes (kv: yes; attn2, unet: biases and 3x3 convolutions, so .diff) "
        "(default: auto)",
    )
    out_args(p, "patch file to write (.safetensors)")
    p.add_argument(
        "--embedding-out",
        default=None,
        help="where the learned tokens go (default: OUT's stem + .tokens.safetensors)",
    )
    p.set_defaults(handler=cmd_forget_photos)


def cmd_forget(args) -> int:
    from fmn_desktop.registry.location import registry_dir
    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.services.defaults import with_model_defaults
    from fmn_desktop.services.forget import ForgetRequest, forget_job
    from fmn_desktop.services.progress import JobContext, run_job

    config = config_from_args(ForgetConfig, args)
    if args.out is None and not args.register:
        raise UsageError("give --out FILE, or --register to keep the patch in the registry")
    req = ForgetRequest(
        config,
        evaluate=args.evaluate,
        registry_root=str(registry_dir(args.registry)) if args.register else None,
        out=args.out,
        tags=args.tag,
        fmt=args.format,
        export_rank=args.export_rank,
        harden=args.harden,
        harden_spellings=args.harden_spellings,
        source="fmn forget",
        overwrite=args.overwrite,
        reference_cache=reference_cache_root(args),
    )
    check_out(args.out, args.overwrite)
    model = load_model(args)
    steps = with_model_defaults(model, config).steps
    bar, progress = step_bar(steps * (1 + args.harden), "re-steering")
    try:
        done = run_job(forget_job(JobContext(phase_printer(progress)), model, req))
    finally:
        bar.close()
    extra = "" if done.lora_error is None else f", LoRA relative error {done.lora_error:.4f}"
    if done.path is not None:
        layout = "LoRA" if done.fmt == "lora" else ".diff"
        print(
            f"wrote {done.path} ({layout}, {done.path.stat().st_size / 1024:.1f} KiB, "
            f"{done.seconds:.1f} s, final loss {done.final_loss:.4f}{extra})"
        )
    if done.scores:
        from fmn_desktop.evaluate.patch_scores import format_scores

        print(format_scores(done.scores, done.concept))
    elif args.evaluate:
        print("not scored: only the embedded model's concepts can be judged", file=sys.stderr)
    if done.record is not None:
        print(f"registered {done.record.name} (id {done.record.id})")
    return 0


def cmd_invert(args) -> int:
    from tqdm import tqdm

    from fmn_desktop.inversion import learn_tokens, save_embedding

    config = inversion_config(args)
    out = Path(args.out)
    check_out(out, args.overwrite)
    model = load_model(args)
    bar = tqdm(total=config.steps, desc="inversion", unit="step", file=sys.stderr)

    def progress(p):
        if p.phase == "train":
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.4f}")

    try:
        result = learn_tokens(model.pipe, args.images, config=config, progress=progress)
    finally:
        bar.close()
    result.learned.meta["base_fingerprint"] = model.fingerprint or ""
    save_embedding(result.learned, out)
    learned = result.learned
    print(
        f"wrote {out} ({learned.placeholder}: {learned.num_vectors} vectors of width "
        f"{learned.width}; denoising loss on fixed draws {result.loss_before:.5f} -> "
        f"{result.loss_after:.5f}; {result.seconds:.1f} s)"
    )
    return 0


def cmd_forget_photos(args) -> int:
    from tqdm import tqdm

    from fmn_desktop.resteer import ForgetConfig
    from fmn_desktop.services.photos import PhotosRequest, forget_from_photos

    inversion = None if args.tokens else inversion_config(args)
    config = config_from_args(ForgetConfig, args, concepts=[args.token], concept_kind="identity")
    check_out(args.out, args.overwrite)
    if args.embedding_out:
        check_out(args.embedding_out, args.overwrite)
    model = load_model(args)
    bars: dict[str, tqdm] = {}

    def progress(p):
        if p.phase == "names":
            print(p.text, file=sys.stderr, flush=True)
            return
        if p.step == 0 or p.phase == "references":  # encoding the photos: a moment
            return
        bar = bars.get(p.phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[p.phase] = tqdm(
                total=p.total,
                desc="inversion" if p.phase == "inversion" else "re-steering",
                unit="step",
                file=sys.stderr,
            )
        bar.update(1)
        bar.set_postfix(loss=f"{p.loss:.4f}")

    try:
        req = PhotosRequest(
            args.images,
            token=args.token,
            inversion=inversion,
            config=config,
            tokens=args.tokens,
            names=list(args.name or []),
            discover=not args.no_discover,
            search_vocabulary=args.search_vocabulary,
            threshold=args.threshold,
            fmt=args.format,
            out=args.out,
            embedding_out=args.embedding_out,
        )
        outcome = forget_from_photos(model, req, progress)
    finally:
        for bar in bars.values():
            bar.close()
    inv = outcome.inversion
    if inv is not None:
        print(
            f"learned {inv.learned.placeholder} ({inv.learned.num_vectors} vectors, denoising "
            f"loss {inv.loss_before:.5f} -> {inv.loss_after:.5f}, {inv.seconds:.1f} s)"
        )
    if outcome.discovery is not None:
        d = outcome.discovery
        shown = [c for c in d.names if c.accepted or c.source == "given"][:8]
        for c in shown:
            state = "forgotten too"
            if not c.accepted:
                state = "forgotten as given, though below the threshold"
            print(f"name {c.text!r}: score {c.image_score:.2f} on the photos, {state}")
        if d.flagged_prompts:
            print(
                "dropped from the preservation set: "
                + "; ".join(f"{p!r} ({s:.2f})" for p, s in d.flagged_prompts)
            )
    f = outcome.forget
    print(
        f"re-steered {', '.join(outcome.concepts)} ({f.patch.meta.hyperparameters['steps']} "
        f"steps, {f.seconds:.1f} s, final loss {f.final_loss:.4f})"
    )
    print(
        f"wrote {outcome.patch_path} ({outcome.patch_path.stat().st_size / 1024:.1f} KiB) "
        f"and {outcome.embedding_path}; total {outcome.seconds:.0f} s"
    )
    return 0
