"""Compile every Triton kernel of mlrb for a real GPU target without a GPU (a helper of
test_ops_triton.py, run in a subprocess without TRITON_INTERPRET).

The interpreter accepts code that the compiler rejects (non-constexpr globals, type
mismatches between branches, ...) and says nothing about registers; this compiles each
kernel with the GPU tile sizes of mlrb.ops.triton for sm_90 (H100) with the ptxas that
ships with triton, and prints one line per kernel: name, registers, stack bytes (spills).
Usage: python triton_compile_check.py [arch]  (default 90)
"""
import os
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import mlrb  # noqa: E402,F401  (maps kernels/ to mlrb.kernels)
from mlrb.kernels import box, loss_space_bwd, loss_space_fwd, pyramid, reduce  # noqa: E402
from mlrb.kernels import layout as L  # noqa: E402
from mlrb.ops.triton import GPU_BLOCKS as BL  # noqa: E402

P = "*fp32"
ALL = dict(SEL=(1 << (L.T_AMLR + 1)) - 1)  # every loss type and the AMLR pair
CASES = [
    (pyramid.pyramid_fwd_kernel, dict(pred="*bf16", gt="*fp32", mask="*u8", ws=P, part=P, geom="*i32"),
     dict(HAS_MASK=True, BS=BL.pyr[0]), BL.pyr[2]),
    (box.box_rows_fwd_kernel, dict(ws=P, geom="*i32"),
     dict(HAS_MASK=True, SEL=L.BOX_BITS, RH=BL.row[0], CW=BL.row[1]), BL.row[2]),
    (loss_space_fwd.loss_space_fwd_kernel, dict(ws=P, part_pyr=P, part=P, geom="*i32"),
     dict(HAS_MASK=True, **ALL, SAVE_Y=True, RH=BL.col[0], CW=BL.col[1], SEG=BL.seg, PCH=BL.reduce_chunk * 4), BL.col[2]),
    (reduce.reduce_kernel, dict(part_pyr=P, part=P, geom="*i32", cols="*i32", out=P, stats=P,
                                si_lambda="fp32", si_scale="fp32"),
     dict(SI_SQRT=True, SEL=L.AMLR_BIT, CH=BL.reduce_chunk), BL.reduce_warps),
    (box.box_rows_bwd_kernel, dict(ws=P, bws=P, geom="*i32"),
     dict(SEL=L.BOX_BITS, RH=BL.row[0], CW=BL.row[1]), BL.row[2]),
    (loss_space_bwd.loss_space_bwd_kernel, dict(ws=P, bws=P, stats=P, G=P, geom="*i32", cols="*i32",
                                                si_lambda="fp32", si_scale="fp32"),
     dict(HAS_MASK=True, **ALL, SI_SQRT=True, RH=BL.col_bwd[0], CW=BL.col_bwd[1], SEG=BL.seg), BL.col_bwd[2]),
    (pyramid.pyramid_bwd_cols_kernel, dict(bws=P, geom="*i32"), dict(TH=BL.ut[0], TW=BL.ut[1]), BL.ut[2]),
    (pyramid.pyramid_bwd_rows_kernel, dict(bws=P, geom="*i32", mask="*u8", grad="*bf16"),
     dict(HAS_MASK=True, TH=BL.ut[0], TW=BL.ut[1]), BL.ut[2]),
]


def main(arch: int = 90) -> int:
    target = GPUTarget("cuda", arch, 32)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    for kernel, types, consts, warps in CASES:
        sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in kernel.arg_names}
        src = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton.compile(src, target=target, options={"num_warps": warps})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        line = next(ln for ln in usage.splitlines() if "REG:" in ln).split()
        fields = dict(kv.split(":") for kv in line if ":" in kv)
        print(kernel.fn.__name__, fields["REG"], fields["STACK"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
