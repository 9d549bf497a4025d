"""Attention on a CPU under bf16 autocast: SDPA's fused kernel in bf16, its math path in bf16, and the fused kernel on
fp32 copies (what hpsearch's CPU attention does), forward and backward, at the shapes of the tiny BERT and MiniLM.

    python -m bench.cpu_attention --out bench/results/CPU_ATTENTION.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.common import RESULTS, machine, now

SHAPES = ((16, 2, 40, 16), (128, 2, 40, 16), (16, 12, 40, 32), (128, 12, 40, 32), (16, 12, 128, 32))
"""(batch, heads, tokens, head size): the tiny BERT and MiniLM at a batch of 16 and fused 8 x 16, and MiniLM at 128
tokens."""


def timed(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def measure(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    """ms per call of each way, with and without the backward."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b, h, n, d = shape
    q, k, v = (torch.randn(b, h, n, d).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.zeros(b, 1, 1, n, dtype=torch.bfloat16)

    def run(way: str, backward: bool) -> None:
        with torch.set_grad_enabled(backward):
            if way == "fused kernel on fp32 copies":
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask.float())
            else:
                kind = SDPBackend.FLASH_ATTENTION if way == "fused kernel, bf16" else SDPBackend.MATH
                with sdpa_kernel(kind):
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if backward:
                out.float().sum().backward()

    ways = ("fused kernel, bf16", "math, bf16", "fused kernel on fp32 copies")
    return {f"{way}, {part}": round(timed(lambda: run(way, part == "forward + backward"), repeats), 2)
            for way in ways for part in ("forward", "forward + backward")}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "CPU_ATTENTION.md"))
    a = ap.parse_args(argv)
    rows = [(shape, measure(shape, a.repeats)) for shape in SHAPES]
    keys = list(rows[0][1])
    lines = ["# Attention on a CPU under bf16 autocast", "", f"- date: {now()}", f"- machine: {machine()}",
             f"- command: `python -m bench.cpu_attention {' '.join(argv)}`", "- ms per call, the mean of "
             f"{a.repeats} after one to warm up", "",
             "| batch, heads, tokens, head size | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {', '.join(map(str, shape))} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |"
              for shape, r in rows]
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
