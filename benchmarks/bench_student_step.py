"""Training throughput of a teacher and its HydraHead students: forward, forward+backward, the distillation step.

Qwen3-1.7B shape (or `--shape tiny` for a CPU check of the script), random weights (timings do not depend
on them), parameters in the compute dtype (bf16, as stage 2 computes), one device. For each length T in
`--lengths`, at one batch B per T (`--batch N`, or `--batch auto`: the largest power of two up to
`--max-batch` whose distillation step fits in memory, halved on each out-of-memory error; longer T start
from the tokens per step that fitted at the shorter one):

- forward and forward+backward of the decoder body, teacher (full attention, trained like a student for
  the comparison) and each student (`--plans`: LA:FA ratios, the same FA KV groups in every layer). The
  loss is the mean square of the last hidden state, so the vocabulary projection is left out;
- the stage-2 distillation step exactly as `DistillationModule` runs it (`bench_distill_step.py`): teacher
  forward without gradients + student forward/backward + the chunked KL of `lit/linear_losses.py`, with the loss
  options and activation checkpointing of `--stage-config`, and its cost split (teacher / student / loss);
- tokens/s (B * T per step), MFU and peak memory (`torch.cuda.max_memory_allocated`, reset per measurement:
  parameters and gradients in bf16, no optimizer state; stage 2 adds fp32 master weights, gradients and AdamW
  moments, 16 bytes a parameter, which FSDP2 shards across ranks).

Timing: CUDA events on a GPU, the wall clock on a CPU (median of `--iters` after `--warmup`).

Model FLOPs per token (no recomputation counted, so checkpointing lowers MFU rather than raising it):
forward = 2 * N + 2 * H_fa * D * T, forward+backward = 3 x forward, where N is the number of decoder-layer
parameters (embedding lookups are not matmuls), H_fa the full-attention query heads summed over layers, D
the head dimension and 2 * H_fa * D * T the causal QK^T and PV products at mean context T / 2. The
Gated DeltaNet state updates of LA heads are not counted (about 2% of 2N at this shape). The distillation
step counts the teacher's forward and the student's forward+backward plus the vocabulary projection that
the chunked losses apply to every token: 2 * V * d for the teacher, 6 * V * d for the student.
MFU = FLOPs per token * tokens/s / `--peak-flops` (default 989e12: H100/H200 SXM bf16 dense).

    python benchmarks/bench_student_step.py --batch auto --markdown docs/benchmarks.md --profile-step 4096
    python benchmarks/bench_student_step.py --device cpu --shape tiny --lengths 32 64   # checks the script
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import shlex
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from bench_distill_step import (
    Cell,
    Clock,
    StageSettings,
    auto_batch,
    distillation_module,
    freeze_teacher,
    make_batch,
    measure_distillation,
    read_stage_config,
    release_memory,
    run_cell,
    time_ms,
)
from torch import nn

import hydrahead_lit as hh
from hydrahead_lit.modeling.arch import decoder_layers
from hydrahead_lit.ops.la_backend import select_la_backend
from hydrahead_lit.parallel import compile_blocks, enable_activation_checkpointing

ROOT = Path(__file__).resolve().parents[1]
H200_BF16_DENSE = 989e12
PROFILE_ROWS = 15


# ----- models ---------------------------------------------------------------------------------------------
def model_config(shape: str, max_len: int) -> transformers.Qwen3Config:
    if shape == "qwen3-1.7b":  # shapes of Qwen3-1.7B (config.json of the public checkpoint); weights are random
        kw = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0)  # fmt: skip
    else:  # tiny: the same head layout (16 query heads, 8 KV groups) at toy widths, for a CPU check
        kw = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=16)  # fmt: skip
    return transformers.Qwen3Config(
        **kw, max_position_embeddings=max(max_len, 40960), tie_word_embeddings=True, rms_norm_eps=1e-6
    )


def plan_one_group_per_layer(config: transformers.PretrainedConfig, ratio: int) -> hh.HeadPlan:
    """`ratio`:1 spread evenly: the same FA KV groups (0, 1, ...) in every layer."""
    n_layers, n_kv = config.num_hidden_layers, config.num_key_value_heads
    if ratio < 1 or n_kv % (ratio + 1):
        raise ValueError(f"--plans {ratio}: an LA:FA ratio needs ratio + 1 to divide the {n_kv} KV groups of a layer")
    return hh.HeadPlan.from_fa_groups(config, {i: list(range(n_kv // (ratio + 1))) for i in range(n_layers)})


@dataclass(frozen=True)
class Flops:
    """Model FLOPs per token (see the module docstring)."""

    body_params: int
    fa_query_heads: int
    head_dim: int
    vocab_x_hidden: int

    @classmethod
    def of(cls, model: nn.Module, plan: hh.HeadPlan) -> Flops:
        cfg = model.config
        n = sum(p.numel() for p in decoder_layers(model).parameters())
        h_fa = sum(plan.num_fa_heads(layer) for layer in range(plan.num_layers))
        return cls(n, h_fa, cfg.head_dim, cfg.vocab_size * cfg.hidden_size)

    def forward(self, T: int) -> float:
        return 2.0 * self.body_params + 2.0 * self.fa_query_heads * self.head_dim * T

    def forward_backward(self, T: int) -> float:
        return 3.0 * self.forward(T)


def distillation_flops(teacher: Flops, student: Flops, T: int) -> float:
    return (
        teacher.forward(T) + 2.0 * teacher.vocab_x_hidden + student.forward_backward(T) + 6.0 * student.vocab_x_hidden
    )


@dataclass
class Trainee:
    """A model measured as if trained: its name, its plan (all FA for the teacher) and its FLOPs."""

    name: str
    model: nn.Module
    plan: hh.HeadPlan
    flops: Flops


def build_models(
    args: argparse.Namespace, cfg: transformers.Qwen3Config, device: torch.device, checkpointing: bool
) -> list[Trainee]:
    with torch.device(device):
        teacher = transformers.Qwen3ForCausalLM(cfg).to(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    all_fa = hh.HeadPlan.all_fa(cfg)
    trainees = [Trainee("teacher", teacher, all_fa, Flops.of(teacher, all_fa))]
    for ratio in args.plans:
        plan = plan_one_group_per_layer(cfg, ratio)
        student = hh.convert(teacher, plan).train()
        trainees.append(Trainee(f"student {ratio}:1", student, plan, Flops.of(student, plan)))
    if checkpointing:  # the students get theirs where stage 2 applies it (bench_distill_step.distillation_module)
        enable_activation_checkpointing(teacher)
    if args.compile_blocks:  # after checkpointing, as parallelize() orders them
        compile_blocks(teacher)
    return trainees


# ----- measurements ---------------------------------------------------------------------------------------
def body_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model.model(input_ids=ids, use_cache=False).last_hidden_state.float().pow(2).mean()


def measure_trainee(model: nn.Module, ids: torch.Tensor, args: argparse.Namespace, clock: Clock) -> tuple:
    """(forward cell, forward+backward cell) of the decoder body on `ids` [B, T]."""
    model.requires_grad_(True).train()

    def forward() -> None:
        with torch.no_grad():
            model.model(input_ids=ids, use_cache=False)

    def forward_backward() -> None:
        body_loss(model, ids).backward()

    def reset() -> None:
        model.zero_grad(set_to_none=True)

    device = ids.device
    fwd = run_cell(lambda: time_ms(forward, clock, args.warmup, args.iters), device, [model])
    fwd_bwd = run_cell(lambda: time_ms(forward_backward, clock, args.warmup, args.iters, reset), device, [model])
    return fwd, fwd_bwd


def run_length(
    T: int, B: int, trainees: list[Trainee], modules: list, args: argparse.Namespace, clock: Clock
) -> dict[tuple[str, str], Cell]:
    """Every cell at length T and batch B: {(model name, "fwd" | "fwd+bwd" | "distill"): Cell}."""
    device = torch.device("cuda" if clock.cuda else "cpu")
    batch = make_batch(trainees[0].model.config.vocab_size, B, T, device)
    ids = batch["input_ids"][:, :-1]
    cells = {}
    for t in trainees:
        cells[t.name, "fwd"], cells[t.name, "fwd+bwd"] = measure_trainee(t.model, ids, args, clock)
        print(f"  T={T} B={B} {t.name}: {describe(cells[t.name, 'fwd'])} / {describe(cells[t.name, 'fwd+bwd'])}",
              flush=True)  # fmt: skip
    freeze_teacher(modules[0])
    models = [t.model for t in trainees]
    losses = [("distill", True)] + ([("distill-reference", False)] if args.reference_loss else [])
    for t, module in zip(trainees[1:], modules):
        for key, fused in losses:
            module.hparams.fused_loss = fused
            measure = lambda m=module: measure_distillation(m, batch, clock, args.warmup, args.iters)  # noqa: E731
            cells[t.name, key] = run_cell(measure, device, models)
            print(f"  T={T} B={B} {t.name} {key}: {describe(cells[t.name, key])}", flush=True)
        module.hparams.fused_loss = True
    return cells


def describe(cell: Cell) -> str:
    return cell.error if cell.error else f"{cell.ms:.1f} ms"


# ----- the profile ----------------------------------------------------------------------------------------
def profile_student_step(model: nn.Module, ids: torch.Tensor) -> list[tuple[str, int, float, float]]:
    """Top kernels (name, calls, self ms, share of all self time) of one forward+backward, self device time
    on a GPU (self CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = ids.device.type == "cuda"
    model.requires_grad_(True).train()
    body_loss(model, ids).backward()  # warm: compilation and autotuning stay out of the profile
    model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        body_loss(model, ids).backward()
        if cuda:
            torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)

    def self_us(e: object) -> float:
        return getattr(e, "self_device_time_total", 0.0) if cuda else e.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events) or 1.0
    events.sort(key=self_us, reverse=True)
    return [(e.key, e.count, self_us(e) / 1e3, self_us(e) / total) for e in events[:PROFILE_ROWS]]


def run_profile(model: nn.Module, ids: torch.Tensor) -> list[tuple[str, int, float, float]] | str:
    """`profile_student_step`, or why it failed (the tables measured before it are still written)."""
    try:
        return profile_student_step(model, ids)
    except torch.OutOfMemoryError:
        error = "OOM"
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        error = f"error ({type(e).__name__}: {e})"
    release_memory([model], ids.device)
    return error


# ----- tables ---------------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def length_label(T: int) -> str:
    return f"{T // 1024}K" if T % 1024 == 0 else str(T)


def rate(tokens: int, cell: Cell) -> float | None:
    return None if cell.ms is None else tokens / cell.ms * 1e3


def fmt(value: float | None, spec: str, missing: str) -> str:
    return missing if value is None else format(value, spec)


def gib(cell: Cell) -> str:
    return cell.error or fmt(cell.peak_gib, ".1f", "n/a (CPU)")


THROUGHPUT_HEADERS = ["T", "batch", "model", "fwd tok/s", "fwd+bwd tok/s", "tok/s vs teacher (fwd / fwd+bwd)",
                      "fwd MFU", "fwd+bwd MFU", "peak GiB fwd / fwd+bwd"]  # fmt: skip
DISTILL_HEADERS = ["T", "batch", "student", "step tok/s", "step ms", "teacher fwd ms", "student fwd+bwd ms",
                   "loss ms", "step tok/s vs teacher fwd+bwd", "MFU", "peak GiB"]  # fmt: skip


def throughput_rows(results: dict, trainees: list[Trainee], peak: float) -> list[list[str]]:
    rows = []
    for (T, B), cells in results.items():
        base_f, base_fb = (rate(B * T, cells[trainees[0].name, k]) for k in ("fwd", "fwd+bwd"))
        for t in trainees:
            f, fb = cells[t.name, "fwd"], cells[t.name, "fwd+bwd"]
            rf, rfb = rate(B * T, f), rate(B * T, fb)
            rel = [None if r is None or b is None else r / b for r, b in ((rf, base_f), (rfb, base_fb))]
            mfu = [None if r is None else r * fl / peak for r, fl in ((rf, t.flops.forward(T)),
                                                                       (rfb, t.flops.forward_backward(T)))]  # fmt: skip
            rows.append([length_label(T), str(B), t.name, fmt(rf, ",.0f", f.error or ""),
                         fmt(rfb, ",.0f", fb.error or ""), " / ".join(fmt(x, ".2f", "-") for x in rel),
                         fmt(mfu[0], ".1%", "-"), fmt(mfu[1], ".1%", "-"), f"{gib(f)} / {gib(fb)}"])  # fmt: skip
    return rows


def distill_rows(results: dict, trainees: list[Trainee], peak: float) -> list[list[str]]:
    rows = []
    teacher = trainees[0]
    for (T, B), cells in results.items():
        base = rate(B * T, cells[teacher.name, "fwd+bwd"])
        keys = ("distill", "distill-reference")
        measured = [(t, key) for t in trainees[1:] for key in keys if (t.name, key) in cells]
        for t, key in measured:
            cell = cells[t.name, key]
            name = t.name if key == "distill" else f"{t.name}, reference loss"
            r, s = rate(B * T, cell), cell.split
            if r is None or s is None:
                rows.append([length_label(T), str(B), name, cell.error or "", *[""] * 6, gib(cell)])
                continue
            mfu = r * distillation_flops(teacher.flops, t.flops, T) / peak
            rows.append([length_label(T), str(B), name, f"{r:,.0f}", f"{s.step_ms:.1f}", f"{s.teacher_ms:.1f}",
                         f"{s.student_ms:.1f}", f"{s.loss_ms:.1f}", fmt(None if base is None else r / base, ".2f", "-"),
                         f"{mfu:.1%}", gib(cell)])  # fmt: skip
    return rows


def profile_table(rows: list[tuple[str, int, float, float]]) -> str:
    def name(key: str) -> str:
        key = key.replace("|", "/")
        return key if len(key) <= 90 else key[:87] + "..."

    return table(["kernel", "calls", "self ms", "share"],
                 [[f"`{name(k)}`", str(c), f"{ms:.2f}", f"{share:.1%}"] for k, c, ms, share in rows])  # fmt: skip


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def heading(args: argparse.Namespace, argv: list[str], device: torch.device, settings: StageSettings,
            checkpointing: bool, trainees: list[Trainee]) -> str:  # fmt: skip
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    card = device_name(device)
    cfg = trainees[0].model.config
    command = shlex.join([Path(sys.executable).name, str(Path(__file__).resolve().relative_to(ROOT)), *argv])
    student = trainees[1].model.config if len(trainees) > 1 else cfg
    return "\n".join([
        f"## Training throughput, {args.shape} ({now}, {card})",
        "",
        f"torch {torch.__version__}, triton {version('triton')}, transformers {transformers.__version__}, "
        f"fla-core {version('fla-core')}. Command, from the project root: `{command}`",
        "",
        f"Shape {args.shape}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads} "
        f"query / {cfg.num_key_value_heads} KV heads of {cfg.head_dim}, vocabulary {cfg.vocab_size}; parameters "
        f"{args.dtype}; activation checkpointing {'on' if checkpointing else 'off'}; decoder blocks "
        f"{'compiled (teacher and students)' if args.compile_blocks else 'eager'}; {settings.describe()}. "
        f"LA backend: training {select_la_backend(device, True)}, inference {select_la_backend(device, False)}; "
        f"FA heads: {getattr(student, '_attn_implementation', '?')}. Batch: {args.batch}"
        f"{f' (cap {args.max_batch})' if args.batch == 'auto' else ''}; median of {args.iters} after {args.warmup} "
        f"warm-up; MFU against {args.peak_flops:.4g} FLOP/s (FLOPs: the script's docstring).",
    ])  # fmt: skip


def report(head: str, results: dict, trainees: list[Trainee], peak: float, profile: tuple | None) -> str:
    parts = [head, "", "Forward and forward+backward of the decoder body:", "",
             table(THROUGHPUT_HEADERS, throughput_rows(results, trainees, peak)), "",
             "Distillation step (teacher forward + student forward/backward + chunked KL), as stage 2 runs it:", "",
             table(DISTILL_HEADERS, distill_rows(results, trainees, peak))]  # fmt: skip
    if profile is not None:
        (T, B, name), rows = profile
        parts += ["", f"Top {PROFILE_ROWS} kernels by self time, one {name} forward+backward at T={T}, batch {B}:",
                  "", profile_table(rows) if isinstance(rows, list) else f"Not profiled: {rows}."]  # fmt: skip
    return "\n".join(parts) + "\n"


def append_markdown(path: Path, text: str) -> None:
    """Append `text` as a new section; what the file holds stays as it is."""
    existing = path.read_text() if path.exists() else ""
    sep = "" if not existing or existing.endswith("\n\n") else ("\n" if existing.endswith("\n") else "\n\n")
    with path.open("a") as f:
        f.write(sep + text)


# ----- command line ---------------------------------------------------------------------------------------
def batch_arg(value: str) -> str | int:
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"--batch takes a positive integer or 'auto', not {value!r}")


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=["qwen3-1.7b", "tiny"], default="qwen3-1.7b")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="parameter and compute dtype")
    p.add_argument("--lengths", type=positive, nargs="+", default=[4096, 16384, 32768, 65536])
    p.add_argument("--batch", type=batch_arg, default=1, help="sequences per step, or 'auto' (see above)")
    p.add_argument("--max-batch", type=positive, default=32, help="the largest batch --batch auto tries")
    p.add_argument("--plans", type=positive, nargs="+", default=[7], help="LA:FA ratios of the students")
    p.add_argument("--stage-config", default="configs/qwen3-1.7b/stage2.yaml",
                   help="stage-2 config (a relative path is tried from here, then from the project root): "
                        "loss options and activation checkpointing")  # fmt: skip
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="activation checkpointing per decoder block (default: as the stage config says)")  # fmt: skip
    p.add_argument(
        "--reference-loss",
        action="store_true",
        help="also time the distillation step with the autograd reference of the logit losses",
    )
    p.add_argument(
        "--compile-blocks",
        action="store_true",
        help="torch.compile every decoder block of teacher and students (compile_blocks)",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=positive, default=3)
    p.add_argument("--peak-flops", type=float, default=H200_BF16_DENSE, help="peak FLOP/s for MFU")
    p.add_argument("--profile-step", type=positive, metavar="T", help="profile one student fwd+bwd at length T")
    p.add_argument("--markdown", type=Path, help="append the tables, as a new section, to this file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (use --device cpu --shape tiny to check the script)")
    if args.markdown is not None and not args.markdown.parent.is_dir():
        p.error(f"--markdown {args.markdown}: the directory {args.markdown.parent} does not exist")
    if args.markdown is not None and args.markdown.exists() and not args.markdown.is_file():
        p.error(f"--markdown {args.markdown} is not a file")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    return args


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    config_path = Path(args.stage_config)
    if not config_path.is_absolute() and not config_path.exists() and (ROOT / config_path).exists():
        config_path = ROOT / config_path
    cfg = model_config(args.shape, max(args.lengths))
    try:  # bad input fails here, before any model is built
        settings = read_stage_config(config_path, shown_as=args.stage_config)
        for ratio in args.plans:
            plan_one_group_per_layer(cfg, ratio)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    checkpointing = settings.activation_checkpointing if args.checkpointing is None else args.checkpointing
    device = torch.device(args.device)
    torch.manual_seed(0)
    trainees = build_models(args, cfg, device, checkpointing)
    teacher = trainees[0].model
    modules = [
        distillation_module(teacher, t.model, t.plan, settings, checkpointing, args.compile_blocks)
        for t in trainees[1:]
    ]
    clock, results = Clock(device), {}
    fitted_tokens = None  # tokens per step that fitted at the previous (shorter) length
    for T in sorted(set(args.lengths)):
        if args.batch == "auto":  # memory grows with tokens per step: a longer T starts from what fitted
            start = args.max_batch if fitted_tokens is None else min(args.max_batch, max(1, fitted_tokens // T))
            freeze_teacher(modules[0])
            B = auto_batch(modules, teacher.config.vocab_size, T, start, device)
            if B is None:
                print(f"T={T}: even batch 1 runs out of memory; longer lengths are skipped", flush=True)
                break
            fitted_tokens = B * T
        else:
            B = args.batch
        print(f"T={T}: batch {B}", flush=True)
        results[T, B] = run_length(T, B, trainees, modules, args, clock)
    profile = None
    if args.profile_step:
        T = args.profile_step
        B = next((b for (t, b) in results if t == T), args.batch if isinstance(args.batch, int) else 1)
        ids = make_batch(teacher.config.vocab_size, B, T, device)["input_ids"][:, :-1]
        profile = ((T, B, trainees[1].name), run_profile(trainees[1].model, ids))
    text = report(heading(args, argv, device, settings, checkpointing, trainees), results, trainees,
                  args.peak_flops, profile)  # fmt: skip
    print("\n" + text, flush=True)
    if args.markdown is not None:
        append_markdown(args.markdown, text)
        print(f"appended to {args.markdown}")
    return text


if __name__ == "__main__":
    main()
