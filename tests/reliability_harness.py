"""Hostile input, kill -9 and concurrent writers against `fmn`, on a tiny model.

Shared by the reliability tests and `scripts/reliability_report.py`. Everything runs in one
process (one torch import): the CLI through `fmn_desktop.cli.main`, and the runs that are
killed or raced in children forked from it.

- `make_world`: a tiny model (folder and single file), a LoRA and a `.diff` patch made for
  it, and a registry holding both in a stack.
- `fuzz`: generated bad patch files, bad checkpoints and bad argument values through inspect,
  import, apply, generate and stack export. A case fails when an exception escapes `main`,
  an "internal error" or a traceback is printed, the exit status is not 0/1/2, a command
  exits 0 with a non-finite output, raw control characters reach stdout, or a temporary
  file is left behind.
- `kill_runs`: SIGKILL import, apply or stack export at a random moment, then check the
  registry (integrity, database == store), the target (absent or whole) and temporaries.
- `concurrent_imports`: three processes importing the same and different files at once.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import signal
import sqlite3
import struct
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
os.environ.setdefault("FMN_THREADS", "1")  # as the test suite runs: one thread per process
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
MID = "mid_block.attentions.0.transformer_blocks.0.attn2"
TMP_RE = re.compile(r"^\.fmn-tmp-")
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x9b]")


def kohya(module: str) -> str:
    return "lora_unet_" + module.replace(".", "_")


# --------------------------------------------------------------------------- the world
@dataclass
class World:
    root: Path
    model: Path  # tiny diffusers folder
    checkpoint: Path  # the same model as one LDM single file
    lora: Path  # a LoRA patch made for it
    diff: Path  # a .diff patch made for it
    registry: Path  # holds both, in stack "s"
    fingerprint: str


def make_world(root: str | os.PathLike) -> World:
    from tiny import tiny_sd_pipeline

    from fmn_desktop.models import export_single_file, load_pipeline
    from fmn_desktop.patch import Delta, Patch, PatchMeta, save_patch
    from fmn_desktop.registry import open_registry

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tiny_sd_pipeline().save_pretrained(root / "model")
    loaded = load_pipeline(root / "model")
    export_single_file(loaded.pipe, root / "model.safetensors")
    params = dict(loaded.pipe.unet.named_parameters())
    g = torch.Generator().manual_seed(0)

    def meta(concept):
        return PatchMeta(
            concepts=[concept], family="sd1", base_fingerprint=loaded.fingerprint, method="test"
        )

    lora = {}
    for m in (f"{ATTN}.to_k", f"{ATTN}.to_v"):
        out_dim, in_dim = params[f"{m}.weight"].shape
        lora[f"{m}.weight"] = Delta(
            up=torch.randn(out_dim, 2, generator=g) * 0.05,
            down=torch.randn(2, in_dim, generator=g) * 0.05,
            alpha=2.0,
        )
    diff = {
        f"{m}.weight": Delta(dense=torch.randn(params[f"{m}.weight"].shape, generator=g) * 0.01)
        for m in (f"{MID}.to_k", f"{MID}.to_v")
    }
    save_patch(Patch(lora, meta("castle")), root / "lora.safetensors", "lora")
    save_patch(Patch(diff, meta("dog")), root / "diff.safetensors", "diff")
    with open_registry(root / "registry") as reg:
        reg.add_base_model(loaded.fingerprint, path=str(root / "model"), family="sd1")
        a = reg.add_patch(root / "lora.safetensors")
        b = reg.add_patch(root / "diff.safetensors")
        reg.create_stack("s")
        reg.add_to_stack("s", a.id, strength=1.0)
        reg.add_to_stack("s", b.id, strength=0.5)
    return World(
        root,
        root / "model",
        root / "model.safetensors",
        root / "lora.safetensors",
        root / "diff.safetensors",
        root / "registry",
        loaded.fingerprint,
    )


# --------------------------------------------------------------------------- running fmn
@dataclass
class Outcome:
    argv: list[str]
    code: int | None
    out: str
    err: str
    escaped: str | None = None  # the traceback of an exception that left main()

    @property
    def traceback(self) -> bool:
        return (
            self.escaped is not None
            or "Traceback (most recent call last)" in self.err
            or "internal error" in self.err
            or self.code not in (0, 1, 2)
        )


def run_cli(argv: list) -> Outcome:
    """`fmn ARGV` in this process, its output captured."""
    from fmn_desktop.cli import main

    argv = ["--threads", "1", *map(str, argv)]
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    code: int | None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # noqa: BLE001 - exactly what must never happen
            code = None
            escaped = traceback.format_exc()
    return Outcome(argv, code, out.getvalue(), err.getvalue(), escaped)


@contextlib.contextmanager
def cached_model(world: World) -> Iterator[None]:
    """Load the world's model once: later loads get it back with its base weights (the fuzz
    is about patches and arguments, not about loading the same folder 1,000 times)."""
    import fmn_desktop.services.model as sm

    real = sm.open_model
    cache: dict = {}

    def open_model(name, *args, **kw):
        if str(name) != str(world.model):
            return real(name, *args, **kw)
        key = json.dumps([args, sorted(kw.items())], default=str)
        if key not in cache:
            model = real(name, *args, **kw)
            cache[key] = (model, {k: v.clone() for k, v in model.pipe.unet.state_dict().items()})
        model, state = cache[key]
        model.pipe.unet.load_state_dict(state)
        return model

    sm.open_model = open_model
    try:
        yield
    finally:
        sm.open_model = real


# --------------------------------------------------------------------------- checks
def finite_file(path: Path) -> bool:
    """Every float tensor of a safetensors file is finite (False if it cannot be read)."""
    try:
        tensors = load_file(str(path))
    except Exception:  # noqa: BLE001
        return False
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def temporaries(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [p for p in folder.rglob("*") if TMP_RE.match(p.name)]
    return found


def registry_state(root: Path) -> dict:
    """Integrity of a registry after a crash: the database's own check, rows against
    files, temporaries, jobs left running."""
    from fmn_desktop.registry import open_registry

    db = root / "registry.db"
    conn = sqlite3.connect(str(db))
    integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    with open_registry(root) as reg:  # the next start: recover, sweep
        problems = reg.verify()
        rows = {p.sha256 for p in reg.list_patches()}
        files = set(reg.store.files())
        running = [j.id for j in reg.jobs(1000) if j.status == "running"]
        temps = temporaries(root)
        reg.gc(grace_s=0)  # files of writes killed between file and row
        after_gc = set(reg.store.files())
    return {
        "integrity": integrity,
        "missing_or_damaged": problems,
        "unreferenced": sorted(files - rows),
        "store_equals_rows_after_gc": after_gc == rows,
        "running_jobs": running,
        "temporaries": [str(p) for p in temps],
    }


def as_other_user(fn: Callable[[], None]) -> str:
    """Run `fn()` as a user without our permissions and return what it printed: as user
    nobody in a forked child when we are root (root may write anywhere), else in-process."""
    if os.geteuid() != 0:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            fn()
        return buf.getvalue()
    _warm()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        child_output(w)
        try:
            os.setgid(65534)
            os.setuid(65534)
            fn()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode(errors="replace")


# --------------------------------------------------------------------------- the corpus
FLOAT_OUT = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool]
FLOAT_IN = [torch.float64, torch.bfloat16, torch.float16]
BAD_ALPHA = [float("nan"), float("inf"), float("-inf"), 0.0, -1.0, 3e38, 1e-45]
BAD_JSON = ["[1, 2]", "3", '"text"', "{", "null", "[" * 5000 + "]" * 5000, '{"a": NaN}', "[]"]
CONTROL_TEXT = ["\x1b[2J\x1b[31mred", "bell\x07", "cr\rover", "nul\x00", "new\nline", "\u202etxt"]


def _raw(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _read(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})


def _tensor_mutations(rng: random.Random, t: dict, meta: dict) -> str:
    """Change `t`/`meta` in place one way; returns what was done."""
    key = rng.choice(sorted(t))
    x = t[key]
    kind = rng.randrange(12)
    if kind == 0 and x.is_floating_point() and x.numel():
        x = x.clone()
        x.view(-1)[rng.randrange(x.numel())] = rng.choice(
            [float("nan"), float("inf"), -float("inf")]
        )
        t[key] = x
        return f"non-finite value in {key}"
    if kind == 1 and x.is_floating_point():
        t[key] = (x.float() * rng.choice([1e20, 1e30, 1e38])).to(x.dtype)
        return f"huge values in {key}"
    if kind == 2:
        dt = rng.choice(FLOAT_OUT + FLOAT_IN)
        t[key] = x.to(dt)
        return f"{key} as {dt}"
    if kind == 3 and x.dim() >= 1:
        choice = rng.randrange(5)
        if choice == 0:
            t[key] = x[:0].contiguous()
        elif choice == 1:
            t[key] = x.t().contiguous() if x.dim() == 2 else x.reshape(-1).contiguous()
        elif choice == 2:
            t[key] = x.reshape(*x.shape, 1).repeat(*([1] * x.dim()), 2).contiguous()
        elif choice == 3:
            t[key] = x[..., : max(1, x.shape[-1] // 2)].contiguous()
        else:
            t[key] = x.reshape(1, 1, 1, 1, -1).contiguous()
        return f"shape of {key} changed to {tuple(t[key].shape)}"
    if kind == 4:
        del t[key]
        if not t:
            t["lora_unet_x.diff"] = torch.zeros(1)
        return f"{key} removed"
    if kind == 5:
        alphas = [k for k in t if k.endswith(".alpha")] or [key.split(".")[0] + ".alpha"]
        a = rng.choice(alphas)
        variant = rng.randrange(4)
        if variant == 0:
            t[a] = torch.tensor(rng.choice(BAD_ALPHA))
        elif variant == 1:
            t[a] = torch.ones(3)
        elif variant == 2:
            t[a] = torch.tensor(True)
        else:
            t[a] = torch.tensor(7, dtype=torch.int64)
        return f"alpha {a} = {t[a].tolist()}"
    if kind == 6:
        new = rng.choice(
            [
                "lora_unet_nonexistent_block.lora_down.weight",
                "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
                "model.diffusion_model.input_blocks.1.1.proj_in.weight",
                "garbage",
                "lora_unet_" + "x" * 300 + ".diff",
                key.replace("to_k", "to_q").replace("to_v", "to_out_0"),
                "lora_unet_down_blocks_9_attentions_0_proj_in.diff",
            ]
        )
        t[new] = t.pop(key)
        return f"{key} renamed {new[:60]}"
    if kind == 7:
        t[key.split(".")[0] + ".hada_w1_a"] = torch.zeros(2, 2)
        return "unsupported tensor added"
    if kind == 8:
        field_ = rng.choice(["fmn.hyperparameters", "fmn.scores", "fmn.concepts"])
        meta[field_] = rng.choice(BAD_JSON)
        return f"{field_} = {meta[field_][:20]!r}"
    if kind == 9:
        field_ = rng.choice(["fmn.family", "fmn.kind", "fmn.base_fingerprint", "fmn.format"])
        meta[field_] = rng.choice(["sd3", "flux", "", "erase", "x" * 500, "toy", "sdxl"])
        return f"{field_} = {meta[field_][:20]!r}"
    if kind == 10:
        text = rng.choice(CONTROL_TEXT)
        meta[rng.choice(["modelspec.title", "fmn.extra.note"])] = text
        meta["fmn.concepts"] = json.dumps([text])
        return f"control characters in metadata {text!r}"
    stats = rng.choice(
        [
            "not json",
            json.dumps({"dtype": "int8", "shape": [2], "b64": "AAA="}),
            json.dumps({"dtype": "float32", "shape": [9], "b64": "AAAA"}),
            json.dumps(
                {
                    "dtype": "float32",
                    "shape": [1, 1],
                    "b64": base64.b64encode(struct.pack("<f", float("nan"))).decode(),
                }
            ),
        ]
    )
    meta["fmn.stats.concept_embeddings"] = stats
    return "bad concept embeddings"


def _byte_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    kind = rng.randrange(10)
    if kind == 0:
        cut = rng.randrange(len(data))
        return data[:cut], f"truncated at {cut}"
    if kind == 1:
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(b), 8 + 400))
            b[i] = rng.randrange(256)
        return bytes(b), "header bytes flipped"
    if kind == 2:
        n = rng.choice([0, 1, 2**40, 2**64 - 1, len(data), len(data) - 8])
        return struct.pack("<Q", n) + data[8:], f"header length {n}"
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))), "random bytes"
    if kind == 4:
        import pickle

        return pickle.dumps({"state_dict": {"w": [1.0] * 4}}, protocol=rng.choice([2, 4])), "pickle"
    if kind == 5:
        return b"PK\x03\x04" + data[4:200], "zip magic"
    if kind == 6:
        return data + b"\0" * rng.randint(1, 64), "padded"
    if kind == 7:
        return b"", "empty"
    header, body = _header_from_bytes(data)
    if kind == 9 or not header:
        return _raw([1, 2, 3], body), "header is a list"
    name = rng.choice([k for k in header if k != "__metadata__"])
    header[name][rng.choice(["dtype", "shape", "data_offsets"])] = rng.choice(
        ["X99", [-1, 4], [0], "F32", [2**62, 2**62], None, [1, 2, 3, 4, 5]]
    )
    return _raw(header, body), f"header entry {name[:40]} damaged"


def _header_from_bytes(data: bytes) -> tuple[dict, bytes]:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8 : 8 + n]), data[8 + n :]
    except Exception:  # noqa: BLE001
        return {}, data


def bad_patch(world: World, rng: random.Random, path: Path) -> str:
    """Write one damaged or hostile patch file at `path`; returns what is wrong with it."""
    source = rng.choice([world.lora, world.diff])
    if rng.random() < 0.7:
        tensors, meta = _read(source)
        what = [_tensor_mutations(rng, tensors, meta) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
        except Exception as exc:  # noqa: BLE001 - the library refuses it: write bytes by hand
            path.write_bytes(source.read_bytes())
            what.append(f"(not writable: {type(exc).__name__})")
        return "; ".join(what)
    data, what = _byte_mutation(rng, source.read_bytes())
    path.write_bytes(data)
    return what


def bad_checkpoint(world: World, rng: random.Random, path: Path) -> str:
    """Write one damaged model file at `path`; returns what is wrong with it."""
    if rng.random() < 0.5:
        tensors, meta = _read(world.checkpoint)
        unet = [k for k in tensors if k.startswith("model.diffusion_model.")]
        kind = rng.randrange(4)
        key = rng.choice(unet)
        if kind == 0:
            tensors[key] = tensors[key].clone()
            tensors[key].view(-1)[0] = float("nan")
            what = f"NaN in {key}"
        elif kind == 1:
            for k in rng.sample(sorted(tensors), 5):
                del tensors[k]
            what = "tensors missing"
        elif kind == 2:
            tensors[key] = torch.zeros(3, 3)
            what = f"{key} of the wrong shape"
        else:
            meta["fmn.configs"] = rng.choice(["{", json.dumps({"../../x.json": "{}"}), "[]"])
            what = "embedded configs damaged"
        save_file(tensors, str(path), metadata=meta)
        return what
    data, what = _byte_mutation(rng, world.checkpoint.read_bytes())
    path.write_bytes(data)
    return what


STRENGTHS = [
    "nan",
    "inf",
    "-inf",
    "1e309",
    "1e308",
    "101",
    "-1e3",
    "0x10",
    "",
    "1,5",
    "1e-400",
    "NaN",
    " 1",
    "100",
    "-100",
    "0",
]
NUMBERS = [
    "0",
    "-1",
    "-64",
    "nan",
    "inf",
    "1e309",
    "99999999999999999999",
    "1.5",
    "",
    "x",
    "7",
    "12",
    "4104",
    "-0",
    "1e3",
    "1001",
]
REFS = ["#0", "id:", "#-1", "9" * 30, "'", '"', "%", "_", "888855", "#99999", "castle", ""]
QUERIES = ['"', "*", "AND", "NEAR(", "col:x", "^", "a OR", "\x1b", "castle", "x" * 2000]


def bad_args(world: World, rng: random.Random, out: Path) -> list:
    """One command line with a hostile argument value (against valid files)."""
    reg = ["--registry", world.registry]
    kind = rng.randrange(9)
    if kind == 0:
        return ["apply", world.model, f"{world.lora}:{rng.choice(STRENGTHS)}", "--out", out]
    if kind == 1:
        flag = rng.choice(["--seeds", "--steps", "--size", "--cfg", "--seed"])
        return [
            "generate",
            world.model,
            "--prompt",
            "a castle",
            "--steps",
            "1",
            "--seeds",
            "1",
            flag,
            rng.choice(NUMBERS),
            "--out",
            out.with_suffix(".png"),
        ]
    if kind == 2:
        flag = rng.choice(["--preserve-weight", "--rank", "--max-error"])
        return [
            "stack",
            "export",
            "s",
            world.model,
            flag,
            rng.choice(NUMBERS + STRENGTHS),
            "--out",
            out,
            *reg,
        ]
    if kind == 3:
        return ["stack", "add", "s", "#1", "--strength", rng.choice(STRENGTHS), *reg]
    if kind == 4:
        return ["patches", "show", rng.choice(REFS), *reg]
    if kind == 5:
        return ["patches", "search", rng.choice(QUERIES), *reg]
    if kind == 6:
        return ["--threads", rng.choice(NUMBERS), "patches", "list", *reg]
    if kind == 7:
        target = rng.choice(
            [
                world.root,
                world.lora / "x.safetensors",
                Path("a\x00b.safetensors"),
                world.root / ("n" * 300 + ".safetensors"),
                world.lora,
                Path(""),
            ]
        )
        return ["apply", world.model, world.lora, "--out", target]
    return [
        "stack",
        "export",
        "s",
        world.model,
        "--mode",
        "fused",
        "--format",
        rng.choice(["lora", "diff", "single-file"]),
        "--out",
        out,
        *reg,
    ]


# --------------------------------------------------------------------------- fuzzing
@dataclass
class FuzzReport:
    cases: int = 0
    by_command: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)
    tracebacks: list = field(default_factory=list)
    corrupt_outputs: list = field(default_factory=list)
    raw_control: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)
    seconds: float = 0.0
    slowest: list = field(default_factory=list)  # (seconds, case) of the slowest cases

    @property
    def failures(self) -> list:
        return self.tracebacks + self.corrupt_outputs + self.raw_control + self.leftovers

    def summary(self) -> str:
        return (
            f"{self.cases} cases ({dict(self.by_command)}), exit codes {dict(self.codes)}, "
            f"{len(self.tracebacks)} tracebacks, {len(self.corrupt_outputs)} exit-0 corrupt "
            f"outputs, {len(self.raw_control)} raw control characters, {len(self.leftovers)} "
            f"left-over temporaries, {self.seconds:.1f} s"
        )


def _case_plan(rng: random.Random, n: int, checkpoints: int) -> list[str]:
    weights = {
        "inspect": 30,
        "import": 25,
        "apply": 15,
        "generate": 3,
        "stack-export": 5,
        "args": 22,
    }
    plan = [k for k, w in weights.items() for _ in range(max(1, (n - checkpoints) * w // 100))]
    plan += ["checkpoint"] * checkpoints
    while len(plan) < n:
        plan.append("inspect")
    rng.shuffle(plan)
    return plan[:n]


def fuzz(
    world: World,
    n: int = 1000,
    seed: int = 0,
    checkpoints: int = 10,
    cache: bool = True,
    log: Callable[[str], None] | None = None,
) -> FuzzReport:
    """Run `n` hostile cases (see the module docstring) and report what went wrong."""
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{seed}-", dir=world.root))
    report = FuzzReport()
    start = time.perf_counter()
    reg = ["--registry", world.registry]
    ctx = cached_model(world) if cache else contextlib.nullcontext()
    with ctx:
        for i, what in enumerate(_case_plan(rng, n, checkpoints)):
            bad = work / f"case{i}.safetensors"
            out = work / f"out{i}.safetensors"
            desc = ""
            if what in ("inspect", "import", "apply", "generate", "stack-export"):
                desc = bad_patch(world, rng, bad)
            if what == "inspect":
                argv = ["inspect", bad] + (["--json"] if rng.random() < 0.3 else [])
            elif what == "import":
                argv = ["patches", "import", bad, *reg]
                if rng.random() < 0.4:
                    argv += ["--model", world.model]
            elif what == "apply":
                argv = [
                    "apply",
                    world.model,
                    f"{bad}:{rng.choice(['1', '0.5', '100', '-3'])}",
                    "--out",
                    out,
                ]
            elif what == "generate":
                argv = [
                    "generate",
                    world.model,
                    "--prompt",
                    "a castle",
                    "--patch",
                    bad,
                    "--steps",
                    "1",
                    "--seeds",
                    "1",
                    "--out",
                    out.with_suffix(".png"),
                ]
            elif what == "stack-export":
                argv = [
                    "stack",
                    "export",
                    "s",
                    world.model,
                    "--out",
                    out,
                    "--format",
                    rng.choice(["lora", "diff", "single-file"]),
                    *reg,
                ]
                desc = _tamper_stack(world, rng)
            elif what == "checkpoint":
                desc = bad_checkpoint(world, rng, bad)
                argv = rng.choice(
                    [
                        ["apply", bad, world.lora, "--out", out],
                        [
                            "generate",
                            bad,
                            "--prompt",
                            "x",
                            "--steps",
                            "1",
                            "--seeds",
                            "1",
                            "--out",
                            out.with_suffix(".png"),
                        ],
                    ]
                )
            else:
                argv = bad_args(world, rng, out)
                desc = "argument"
            t0 = time.perf_counter()
            result = run_cli(argv)
            report.slowest = sorted(
                [
                    *report.slowest,
                    (
                        time.perf_counter() - t0,
                        f"case {i} ({what}: {desc}): " + " ".join(map(str, argv))[:200],
                    ),
                ],
                reverse=True,
            )[:5]
            if what == "stack-export":
                _untamper_stack(world)
            report.cases += 1
            report.by_command[what] += 1
            report.codes[result.code] += 1
            label = f"case {i} ({what}: {desc}): {' '.join(map(str, argv))[:300]}"
            if result.traceback:
                report.tracebacks.append(f"{label}\n{result.escaped or result.err[-3000:]}")
            if RAW_CONTROL.search(result.out):
                report.raw_control.append(label)
            if result.code == 0:
                bad_output = _check_outputs(argv, out, world)
                if bad_output:
                    report.corrupt_outputs.append(f"{label}: {bad_output}")
            left = temporaries(work, world.registry)
            if left:
                report.leftovers.append(f"{label}: {left}")
                for p in left:
                    p.unlink(missing_ok=True)
            for p in (out, out.with_suffix(".png"), bad):
                if p.is_file():
                    p.unlink()
            if log and (i + 1) % 200 == 0:
                log(f"{i + 1} cases, {time.perf_counter() - start:.0f} s")
    report.seconds = time.perf_counter() - start
    return report


def _tamper_stack(world: World, rng: random.Random) -> str:
    """Damage the registry's stack behind its back (an older or edited database)."""
    conn = sqlite3.connect(str(world.registry / "registry.db"))
    with conn:
        kind = rng.randrange(3)
        if kind == 0:
            value = rng.choice([1e308, -1e308, 1e6, 101.0, float("inf")])
            conn.execute("update stack_items set strength = ? where position = 0", [value])
            what = f"stored strength {value}"
        elif kind == 1:
            conn.execute("update stack_items set strength = 100 where position = 0")
            what = "strength 100"
        else:
            what = "untouched"
    conn.close()
    return what


def _untamper_stack(world: World) -> None:
    conn = sqlite3.connect(str(world.registry / "registry.db"))
    with conn:
        conn.execute("update stack_items set strength = 1.0 where position = 0")
    conn.close()


def _check_outputs(argv: list, out: Path, world: World) -> str | None:
    """Why the output of a successful command is corrupt (None when it is fine)."""
    from fmn_desktop.patch.format import load_patch

    command = str(argv[0])
    if command == "apply" and out.is_file() and not finite_file(out):
        return "model file with non-finite weights"
    if command == "stack" and out.is_file():
        if "single-file" in map(str, argv):
            return None if finite_file(out) else "model file with non-finite weights"
        try:
            load_patch(out)
        except Exception as exc:  # noqa: BLE001
            return f"unreadable stack export ({exc})"
    if command == "patches" and argv[1] == "import":
        for path in (world.registry / "patches").glob("??/*.safetensors"):
            if path.name not in _CHECKED:
                if not finite_file(path):
                    return f"registered {path.name} holds non-finite values"
                _CHECKED.add(path.name)
    return None


_CHECKED: set[str] = set()  # registered files already found finite


# --------------------------------------------------------------------------- kill -9
@dataclass
class KillReport:
    command: str
    runs: int = 0
    killed: int = 0  # killed before finishing (the others had ended on their own)
    failures: list = field(default_factory=list)
    integrity_ok: int = 0
    targets_absent: int = 0
    targets_whole: int = 0
    temporaries_left_by_kill: int = 0  # found before the next start tidied up
    temporaries_after_start: int = 0
    unreferenced_files: int = 0
    interrupted_jobs: int = 0


def child_output(fd: int) -> None:
    """In a forked child: stdout and stderr (the fds and Python's objects, which a test
    runner may have replaced) go to `fd`."""
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def _warm() -> None:
    """What every child would otherwise compute again: the CLI's parser, the families' names."""
    import fmn_desktop.cli as cli
    from fmn_desktop.patch.standalone import family_parameter_names

    family_parameter_names()
    if cli._PARSER is None:
        cli._PARSER = cli.build_parser()


def _fork_cli(argv: list) -> int:
    """Run `fmn ARGV` in a forked child (output discarded); returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            child_output(os.open(os.devnull, os.O_WRONLY))
            from fmn_desktop.cli import main

            code = main(["--threads", "1", *map(str, argv)])
        except BaseException:  # noqa: BLE001
            code = 99
        os._exit(code if isinstance(code, int) else 98)
    return pid


def _timed(argv: list) -> float:
    """Seconds from the fork's return (the child running) to its end."""
    pid = _fork_cli(argv)
    t = time.perf_counter()
    os.waitpid(pid, 0)
    return time.perf_counter() - t


def kill_runs(world: World, command: str, n: int = 20, seed: int = 0) -> KillReport:
    """SIGKILL `command` ("import", "apply", "stack-export") at `n` random moments."""
    from fmn_desktop.fileio import sweep
    from fmn_desktop.patch.format import load_patch
    from fmn_desktop.registry import open_registry

    rng = random.Random(seed)
    _warm()
    report = KillReport(command)
    work = Path(tempfile.mkdtemp(prefix=f"kill-{command}-{seed}-", dir=world.root))
    reg_root = work / "registry"
    with open_registry(reg_root) as reg:  # a registry of its own, with a stack to export
        a = reg.add_patch(world.lora)
        b = reg.add_patch(world.diff)
        reg.create_stack("s")
        reg.add_to_stack("s", a.id)
        reg.add_to_stack("s", b.id, strength=0.5)
    sources = []
    for i in range(n):  # distinct files to import (distinct bytes: distinct rows)
        tensors, meta = _read(world.lora)
        meta["fmn.concepts"] = json.dumps([f"castle{i}"])
        path = work / f"import{i}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        sources.append(path)

    def argv_for(i: int) -> tuple[list, Path | None]:
        out = work / f"target{i}.safetensors"
        if command == "import":
            return ["patches", "import", sources[i], "--registry", reg_root], None
        if command == "apply":
            return ["apply", world.model, world.lora, world.diff, "--out", out], out
        return [
            "stack",
            "export",
            "s",
            world.model,
            "--out",
            out,
            "--registry",
            reg_root,
            "--register",
        ], out

    duration = max(_timed(argv_for(0)[0]), 0.01)  # how long one run takes, unkilled
    for i in range(n):
        argv, target = argv_for(i)
        if target is not None and target.exists():
            target.unlink()
        pid = _fork_cli(argv)
        # half the moments over the whole run, half over its second half, where it writes
        time.sleep(rng.uniform(0 if i % 2 == 0 else duration / 2, duration))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        report.runs += 1
        if os.WIFSIGNALED(status):
            report.killed += 1
        report.temporaries_left_by_kill += len(temporaries(work))
        # the next start: the registry's open and the folder's next writer tidy up
        state = registry_state(reg_root)
        sweep(work)
        if (
            state["integrity"] == "ok"
            and not state["missing_or_damaged"]
            and state["store_equals_rows_after_gc"]
            and not state["running_jobs"]
        ):
            report.integrity_ok += 1
        else:
            report.failures.append(f"run {i}: registry {state}")
        report.unreferenced_files += len(state["unreferenced"])
        if state["temporaries"]:
            report.failures.append(f"run {i}: temporaries after open {state['temporaries']}")
        left = temporaries(work)
        if left:
            report.failures.append(f"run {i}: temporaries after the next start {left}")
        report.temporaries_after_start += len(left) + len(state["temporaries"])
        if target is not None:
            if not target.exists():
                report.targets_absent += 1
            else:
                try:
                    whole = (
                        finite_file(target)
                        if command == "apply"
                        else bool(load_patch(target).deltas)
                    )
                except Exception:  # noqa: BLE001
                    whole = False
                if whole:
                    report.targets_whole += 1
                else:
                    report.failures.append(f"run {i}: partial target {target}")
    with open_registry(reg_root) as reg:
        report.interrupted_jobs = sum(j.status == "interrupted" for j in reg.jobs(10_000))
    return report


# --------------------------------------------------------------------------- concurrency
@dataclass
class RaceReport:
    rounds: int = 0
    processes: int = 0
    failures: list = field(default_factory=list)
    imported_same_once: int = 0


def concurrent_imports(world: World, rounds: int = 5, procs: int = 3) -> RaceReport:
    """`procs` processes at once, each importing the same file and one of its own, into
    one registry; every row must land once, every process exit 0 with no SQL error."""
    from fmn_desktop.registry import open_registry

    report = RaceReport()
    _warm()
    tensors, meta = _read(world.lora)
    for r in range(rounds):
        work = Path(tempfile.mkdtemp(prefix=f"race-{r}-", dir=world.root))
        reg_root = work / "registry"
        shared = work / "shared.safetensors"
        meta["fmn.concepts"] = json.dumps([f"shared{r}"])
        save_file(tensors, str(shared), metadata=meta)
        own = []
        for p in range(procs):
            meta["fmn.concepts"] = json.dumps([f"own{r}-{p}"])
            path = work / f"own{p}.safetensors"
            save_file(tensors, str(path), metadata=meta)
            own.append(path)
        pids = []
        for p in range(procs):
            files = [shared, own[p]] if p % 2 == 0 else [own[p], shared]
            log = work / f"log{p}.txt"
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 97
                try:
                    child_output(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
                    from fmn_desktop.cli import main

                    code = main(
                        ["patches", "import", *map(str, files), "--registry", str(reg_root)]
                    )
                    sys.stdout.flush()
                    sys.stderr.flush()
                except BaseException:  # noqa: BLE001
                    traceback.print_exc()
                    sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 96)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        logs = [(work / f"log{p}.txt").read_text(errors="replace") for p in range(procs)]
        report.rounds += 1
        report.processes += procs
        for code, text in zip(codes, logs):
            if code != 0 or re.search(r"UNIQUE|sqlite|constraint|Traceback", text):
                report.failures.append(f"round {r}: exit {code}: {text[-500:]}")
        with open_registry(reg_root) as reg:
            names = sorted(p.name for p in reg.list_patches())
            problems = reg.verify()
        want = sorted([f"forget-shared{r}"] + [f"forget-own{r}-{p}" for p in range(procs)])
        if names != want or problems:
            report.failures.append(f"round {r}: rows {names} (want {want}); {problems}")
        if (
            sum(
                line.startswith("imported: #") and f"shared{r}" in line
                for t in logs
                for line in t.splitlines()
            )
            == 1
        ):
            report.imported_same_once += 1
    return report
