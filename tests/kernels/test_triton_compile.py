"""The Triton kernels compile for a GPU (sm_90) ahead of time, without one.

The interpreter runs the kernels' Python semantics; this compiles the real thing down to a
cubin with triton's bundled ptxas, so type errors that only the compiler sees (loop
bounds, pointer arithmetic, dtype casts, bf16) fail on a CPU-only machine too. It runs in
a subprocess because ``TRITON_INTERPRET=1`` (set for the other kernel tests) replaces the
kernels with interpreted functions at import.
"""

import os
import subprocess
import sys

from tests.kernels.conftest import needs_triton

pytestmark = needs_triton

SCRIPT = r'''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from ctr.kernels.embedding_bag import triton as k

def compile_(fn, signature, constexprs, warps):
    # every argument 16-divisible, as the JIT specializes them for the usual shapes
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(len(signature))}
    source = ASTSource(fn=fn, signature={**signature, **{n: "constexpr" for n in constexprs}}, constexprs=constexprs,
                       attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps}).asm["cubin"]

i32, i64, f32 = "i32", "*i64", "*fp32"
for dtype in ("fp32", "fp16", "bf16"):
    pool = dict(weight_ptr=f"*{dtype}", indices_ptr=i64, offsets_ptr=i64, scales_ptr=f32, out_ptr=f"*{dtype}",
                num_bags=i32, D=i32, stride_w=i32, stride_out=i32)
    backward = dict(grad_ptr=f32, bags_ptr=i64, scales_ptr=f32, starts_ptr=i64, ends_ptr=i64, rows_ptr=i64,
                    count_ptr=i64, chunk_first_ptr=i64, partial_ptr=f32,
                    weight_ptr=f"*{dtype}", state1_ptr=f32, state2_ptr=f32, out_ptr=f32, D=i32,
                    stride_g=i32, stride_w=i32, lr="fp32", eps="fp32", beta1="fp32", beta2="fp32")
    for dim in (16, 64, 128):
        rows, block_d, warps = k._blocks(dim)
        for has_scales, mean in ((True, False), (False, True), (False, False)):
            compile_(k._pool_kernel, pool, dict(HAS_SCALES=has_scales, MEAN=mean, BLOCK_B=rows, BLOCK_D=block_d), warps)
        for rule in (0, 1, 2, 3, 4) if dtype != "fp16" else (3,):
            for has_scales in (True, False):
                for chunks in (True, False):
                    compile_(k._sorted_backward_kernel, backward, dict(
                        HAS_SCALES=has_scales, RULE=rule, HAS_CHUNKS=chunks, CHUNK=k.CHUNK, BLOCK_U=rows, BLOCK_D=block_d,
                    ), warps)
print("compiled")
'''


def test_kernels_compile_to_sm90_cubins():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
