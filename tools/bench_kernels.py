"""Guest instructions per MAC of the INT8 and INT4 linear kernels under QEMU.

The tool builds one bare-metal image (firmware/bench/) for the Cortex-M7 (QEMU
mps2-an500, the "dsp" kernels) and one for the Cortex-M55 (QEMU mps3-an547, the "mve"
kernels). Each contains the naive C loop (firmware/bench/naive.c), the portable kernels and
the board's variant, all rendered from templates/kernels.c.j2, and runs once under
`qemu-system-arm -icount shift=0`. There every guest instruction advances the virtual
clock by 1 ns, and SysTick counts that clock at the core clock (25 MHz on mps2-an500,
32 MHz on mps3-an547), so instructions = ticks x 1e9 / clock. A loop of known length
(2 n + 1 instructions) checks this conversion in the same run. The guest also checks
that the three kernels give the same bytes for every layer.

Layers: the full-size model with all 97 positions at once: 97 x 512 -> 1536 and
97 x 1536 -> 512 (the MLP), and the token mixing as the model runs it, on the transposed
activations: 512 x 97 -> 256 and 512 x 256 -> 97.

Usage:
    python tools/bench_kernels.py [--cpu m7 m55] [--bits 8 4] [--json FILE]

The image builder and runner are in codegen/rrgen/icount.py, which `build
--count-instructions` also uses. This file is also the library of
tests/test_kernel_variants.py: it re-exports build_image() and run_image(), which build and
run the kernel test image (firmware/bench/kernel_test.c), and reference_outputs()
recomputes its cases with codegen/rrgen/reference.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "codegen"))

from rrgen import reference  # noqa: E402
from rrgen.icount import (CPUS, Case, Cpu, GuestError, build_image,  # noqa: E402,F401
                          parse_lines, render_kernels, run_image)
from rrgen.quantize import QLinear  # noqa: E402

FULL_SIZE_LAYERS = ((97, 512, 1536), (97, 1536, 512), (512, 97, 256), (512, 256, 97))


# ---------------------------------------------------------------------------------------
# The guest's data, rebuilt on the host (firmware/bench/data.h)
# ---------------------------------------------------------------------------------------

def xorshift32(state: int, count: int) -> tuple[np.ndarray, int]:
    values = np.empty(count, dtype=np.uint64)
    for i in range(count):
        state ^= (state << 13) & 0xFFFFFFFF
        state ^= state >> 17
        state ^= (state << 5) & 0xFFFFFFFF
        values[i] = state
    return values, state


def case_data(case: Case, seed: int) -> tuple[np.ndarray, QLinear]:
    """Draw the input [rows, in] and the layer as bench_fill does for case and seed."""
    state = seed
    draw, state = xorshift32(state, case.rows * case.in_features)
    x = (draw >> 24).astype(np.uint8).view(np.int8).reshape(case.rows, case.in_features)
    draw, state = xorshift32(state, case.out_features * case.in_features)
    if case.bits == 8:
        weight = (draw % 255).astype(np.int64) - 127
    else:
        weight = (draw & 15).astype(np.int64)
        weight = np.where(weight > 7, weight - 16, weight)
    weight = weight.reshape(case.out_features, case.in_features)
    if case.has_bias:
        draw, state = xorshift32(state, case.out_features)
        bias = (draw % 20001).astype(np.int64) - 10000
    else:
        bias = None
    draw, state = xorshift32(state, case.out_features)
    multiplier = ((1 << 30) | (draw & ((1 << 30) - 1))).astype(np.int64)
    draw, state = xorshift32(state, case.out_features)
    shift = case.shift_lo + (draw % (case.shift_hi - case.shift_lo + 1)).astype(np.int64)
    layer = QLinear(weight=weight.astype(np.int8), bits=case.bits,
                    weight_scale=np.ones(case.out_features), multiplier=multiplier,
                    shift=shift, bias=bias, out_min=-128, out_max=127)
    return x, layer


def reference_outputs(case: Case, seed: int) -> np.ndarray:
    """Compute rrgen.reference.linear on the case's data: int8 [rows, out]."""
    x, layer = case_data(case, seed)
    return reference.linear(x[None].astype(np.int64), layer)[0].astype(np.int8)


def kernel_test_seed(index: int) -> int:
    return 0x9E3779B9 ^ index


def bench_seed(index: int) -> int:
    return 0x2545F491 ^ index


# ---------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------

def parse_bench(text: str, cpu: Cpu, cases: list[Case]) -> dict:
    parsed = parse_lines(text, cpu)
    calibration, runs, empty = parsed["calibration"], parsed["runs"], parsed["empty"]
    layers = []
    for index, case in enumerate(cases):
        entry = {"layer": case.label, "bits": case.bits, "macs": case.macs,
                 "floor": cpu.floor, "target": cpu.targets[case.bits]}
        for kernel, name in enumerate(("naive", "portable", cpu.variant)):
            instructions, same = runs[(index, kernel)]
            entry[name] = round(instructions / case.macs, 4)
            entry[f"{name}_same_bytes"] = same
        entry["met"] = entry[cpu.variant] <= entry["target"]
        layers.append(entry)
    return {"cpu": cpu.name, "machine": cpu.machine, "variant": cpu.variant,
            "clock_hz": cpu.clock_hz, "calibration": calibration,
            "empty_measurement_instructions": empty, "layers": layers}


def bench_cpu(cpu: Cpu, bits: list[int], work: Path) -> dict:
    cases = [Case(rows, k, n, b) for b in bits for rows, k, n in FULL_SIZE_LAYERS]
    elf = build_image(cpu, "bench_main", cases, work / cpu.name)
    start = time.monotonic()
    text = run_image(cpu, elf, work / cpu.name)
    result = parse_bench(text, cpu, cases)
    result["qemu_seconds"] = round(time.monotonic() - start, 1)
    return result


def table(results: list[dict]) -> str:
    lines = ["| CPU | layer | weights | naive C | portable | variant | floor | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        for e in result["layers"]:
            variant = result["variant"]
            lines.append(f"| {result['cpu']} | {e['layer']} | INT{e['bits']} | {e['naive']:.3f} | "
                         f"{e['portable']:.3f} | {e[variant]:.3f} ({variant}) | "
                         f"{e['floor']:.4g} | {e['target']} | "
                         f"{'yes' if e['met'] else 'NOT MET'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", nargs="+", default=["m7", "m55"], choices=sorted(CPUS))
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4], choices=[4, 8])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="rrgen-bench-kernels-") as folder:
        for name in args.cpu:
            try:
                results.append(bench_cpu(CPUS[name], args.bits, Path(folder)))
            except GuestError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1

    for result in results:
        for cal in result["calibration"]:
            print(f"{result['cpu']}: calibration loop of {cal['expected_instructions']} "
                  f"instructions measured {cal['measured_instructions']:.0f} "
                  f"(ratio {cal['ratio']:.6f})")
        print(f"{result['cpu']}: QEMU ran {result['qemu_seconds']} s")
    print("Guest instructions per MAC (qemu-system-arm -icount shift=0):")
    print(table(results))
    bad = [f"{r['cpu']} {e['layer']} INT{e['bits']}" for r in results for e in r["layers"]
           if not all(e[f"{k}_same_bytes"] for k in ("naive", "portable", r["variant"]))]
    if bad:
        print(f"error: kernel outputs differ from the naive loop for {', '.join(bad)}",
              file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
