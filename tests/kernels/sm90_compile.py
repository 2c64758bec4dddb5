"""Compile the project's Triton kernels for Hopper (sm_90) on a machine without a GPU.

Triton's interpreter (the CPU tests) runs a kernel's Python, not its compiler: code that the interpreter
accepts can still fail to compile (a global that is not a `tl.constexpr`, an unsupported dot shape). This
script catches that class of error where no GPU is at hand, in two steps, each its own process:

- `record OUT.json`: run the hybrid op's forward and backward under the interpreter, in bf16, at the
  model's head size (128) and the production chunk (64), then the gated delta rule on packed documents
  with initial and final states, and record every kernel launch: the kernel,
  its argument types and its constexpr and `num_warps` values (the launchers are told they are not
  interpreted, so they pass the `num_warps` a GPU gets; the recorder drops it before the interpreted
  call);
- `compile OUT.json`: with the interpreter off, `triton.compile` each recorded launch for
  `GPUTarget("cuda", 90, 64)` and print its registers and stack per thread where `cuobjdump` can
  read them.

    TRITON_INTERPRET=1 python tests/kernels/sm90_compile.py record /tmp/launches.json
    TRITON_INTERPRET=0 python tests/kernels/sm90_compile.py compile /tmp/launches.json
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER_MODULES = ("hydrahead_lit.kernels.gated_delta_rule", "hydrahead_lit.kernels.fusion_norm")


def _kind(value: object) -> object:
    import torch

    if isinstance(value, torch.Tensor):
        return {"pointer": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, bool):
        return {"int": int(value)}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    raise TypeError(f"unexpected kernel argument of type {type(value).__name__}")


def record(out: Path) -> None:
    import torch
    import torch.nn.functional as F

    from hydrahead_lit.kernels.gated_delta_rule import chunk_gated_delta_rule_triton
    from hydrahead_lit.kernels.hybrid_attention import hybrid_attention_triton

    launches: list[dict] = []

    class Recorder:
        def __init__(self, kernel: object, module: str, name: str) -> None:
            self.kernel, self.where = kernel, (module, name)

        def __getitem__(self, grid: object):
            def launch(*args: object, **kwargs: object) -> object:
                warps = kwargs.pop("num_warps", None)
                launches.append({"module": self.where[0], "name": self.where[1], "num_warps": warps,
                                 "args": [_kind(a) for a in args], "constexprs": kwargs})  # fmt: skip
                return self.kernel[grid](*args, **kwargs)

            return launch

    for module_name in LAUNCHER_MODULES:
        module = importlib.import_module(module_name)
        module.interpret_mode = lambda: False  # pass the num_warps a GPU launch gets (the recorder drops it)
        for name in [n for n in vars(module) if n.endswith("_kernel")]:
            kernel = getattr(module, name)
            defined_in = getattr(getattr(kernel, "fn", kernel), "__module__", module_name)
            setattr(module, name, Recorder(kernel, defined_in, name))

    torch.manual_seed(0)
    B, T, Hfa, Hla, D = 1, 70, 2, 2, 128  # T: a full chunk of 64 and a tail
    bf = torch.bfloat16
    xs = [torch.randn(B, T, Hfa, D), torch.randn(B, T, 1, D), torch.randn(B, T, 1, D),
          F.normalize(torch.randn(B, T, Hla, D), dim=-1), F.normalize(torch.randn(B, T, Hla, D), dim=-1),
          torch.randn(B, T, Hla, D)]  # fmt: skip
    xs = [x.to(bf) for x in xs] + [F.logsigmoid(torch.randn(B, T, Hla) + 2.0), torch.rand(B, T, Hla).to(bf)]
    xs += [torch.rand(Hfa) + 0.5, torch.rand(Hla, D) + 0.5]
    xs = [x.requires_grad_() for x in xs]
    import numpy as np

    # The interpreter's bf16 arithmetic is not the GPU's (numpy has no bf16; results here overflow): only
    # the launches are wanted, so its floating-point warnings are silenced.
    with np.errstate(all="ignore"):
        hybrid_attention_triton(*xs).float().square().sum().backward()
        # Packed documents (the IS_VARLEN variants), with an initial and a final state.
        q, k, v, g, b = (x.detach().requires_grad_() for x in xs[3:8])
        h0 = torch.zeros(2, Hla, D, D, requires_grad=True)
        cu = torch.tensor([0, 30, T], dtype=torch.int32)
        o, ht = chunk_gated_delta_rule_triton(q, k, v, g, b, initial_state=h0, output_final_state=True, cu_seqlens=cu)
        (o.float().square().sum() + ht.sum()).backward()
    out.write_text(json.dumps(launches, indent=1))
    print(f"recorded {len(launches)} launches of {len({(r['module'], r['name']) for r in launches})} kernels")


_POINTER = {"bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32", "int32": "*i32", "int64": "*i64"}


def _signature(fn: object, launch: dict) -> tuple[dict, dict]:
    names = list(fn.arg_names)
    consts = dict(launch["constexprs"])
    runtime = [n for n in names if n not in consts]
    if len(runtime) != len(launch["args"]):
        raise ValueError(f"{launch['name']}: {len(launch['args'])} arguments recorded for {len(runtime)} parameters")
    signature = {n: "constexpr" for n in consts}
    for name, kind in zip(runtime, launch["args"], strict=True):
        if "pointer" in kind:
            signature[name] = _POINTER[kind["pointer"]]
        elif "int" in kind:
            signature[name] = "i32" if -(2**31) <= kind["int"] < 2**31 else "i64"
        else:
            signature[name] = "fp32"
    return {n: signature[n] for n in names}, consts


def _resources(cubin: bytes) -> str:
    """`REG:.. STACK:..` of the kernel, from cuobjdump when Triton ships it."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return "resources: cuobjdump not found"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        lines = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout.splitlines()
    usage = [line.strip() for line in lines if "REG:" in line]
    return " ".join(usage[-1].split()[:2]) if usage else "resources: not reported"


def compile_all(path: Path) -> None:
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 64)
    seen = set()
    for launch in json.loads(path.read_text()):
        key = json.dumps([launch["module"], launch["name"], launch["constexprs"], launch["num_warps"]])
        if key in seen:
            continue
        seen.add(key)
        fn = getattr(importlib.import_module(launch["module"]), launch["name"])
        signature, consts = _signature(fn, launch)
        options = {"num_warps": launch["num_warps"]} if launch["num_warps"] else {}
        kernel = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts),
                                target=target, options=options)  # fmt: skip
        print(f"{launch['name']} num_warps={launch['num_warps']} {consts}: {_resources(kernel.asm['cubin'])}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("record", "compile"):
        raise SystemExit(__doc__)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    if (sys.argv[1] == "record") != (os.environ.get("TRITON_INTERPRET") == "1"):
        raise SystemExit("record runs with TRITON_INTERPRET=1, compile with TRITON_INTERPRET=0")
    (record if sys.argv[1] == "record" else compile_all)(Path(sys.argv[2]))
