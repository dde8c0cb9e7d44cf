"""Guest instructions per MAC of the INT8 and INT4 linear kernels under QEMU.

The tool builds one bare-metal image (firmware/bench/) for the Cortex-M7 (QEMU
mps2-an500, the "dsp" kernels) and one for the Cortex-M55 (QEMU mps3-an547, the "mve"
kernels). Each holds the naive C loop (firmware/bench/naive.c), the portable kernels and
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

Also the library of tests/test_kernel_variants.py: build_image() and run_image() build and
run the kernel test image (firmware/bench/kernel_test.c), reference_outputs() recomputes
its cases with codegen/rrgen/reference.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "codegen"))

from rrgen import reference  # noqa: E402
from rrgen.emit import environment  # noqa: E402
from rrgen.quantize import QLinear, pack_int4  # noqa: E402

BENCH_DIR = REPO / "firmware" / "bench"
INCLUDE_DIR = REPO / "firmware" / "include"
# Every function that kernels.c exports: the portable copy gets a portable_ prefix.
EXPORTED = ("rr_linear_s8", "rr_linear_s4", "rr_linear_s8_s16", "rr_glu_s8",
            "rr_add_rmsnorm_s8", "rr_add_s8", "rr_transpose_s8", "rr_argmax_s16")
MAX_FEATURES = 1536       # RR_MAX_FEATURES and RR_VARIANT_MAX_IN of the images


@dataclass(frozen=True)
class Cpu:
    name: str
    machine: str          # QEMU -M
    cflags: tuple[str, ...]
    variant: str          # kernel variant of kernels.c.j2
    clock_hz: int         # SysTick clock = core clock of the QEMU machine
    floor: float          # instructions per MAC of the widest multiply-accumulate
    targets: dict         # bits -> instructions per MAC to reach


CPUS = {
    "m7": Cpu("m7", "mps2-an500", ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16",
                                   "-mfloat-abi=hard"), "dsp", 25_000_000, 0.5,
              {8: 1.5, 4: 2.5}),
    "m55": Cpu("m55", "mps3-an547", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
               "mve", 32_000_000, 1 / 16, {8: 0.25, 4: 0.3}),
}


@dataclass(frozen=True)
class Case:
    """One layer; the same fields as bench_case_t in firmware/bench/data.h."""

    rows: int
    in_features: int
    out_features: int
    bits: int
    has_bias: int = 1
    shift_lo: int = -12
    shift_hi: int = -9

    @property
    def macs(self) -> int:
        return self.rows * self.in_features * self.out_features

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.in_features}->{self.out_features}"


FULL_SIZE_LAYERS = ((97, 512, 1536), (97, 1536, 512), (512, 97, 256), (512, 256, 97))


class GuestError(RuntimeError):
    """A build or a QEMU run of a test or benchmark image that failed."""


def find(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise GuestError(f"{tool} not found on PATH; install the Debian package {package}")
    return path


def cases_header(cases: list[Case]) -> str:
    rows = ",\n".join(f"    {{ {c.rows}, {c.in_features}, {c.out_features}, {c.bits}, "
                      f"{c.has_bias}, {c.shift_lo}, {c.shift_hi} }}" for c in cases)
    return ("/* Written by tools/bench_kernels.py. */\n"
            f"static const bench_case_t cases[] = {{\n{rows}\n}};\n")


def render_kernels(variant: str) -> str:
    return environment().get_template("kernels.c.j2").render(
        banner=f"/* rendered by tools/bench_kernels.py, variant {variant} */",
        linear_kinds=["s4", "s8"], max_features=MAX_FEATURES, has_attention=False,
        kernel_variant=variant, max_in_features=MAX_FEATURES)


def build_image(cpu: Cpu, program: str, cases: list[Case], out_dir: Path) -> Path:
    """Compile and link firmware/bench/<program>.c for cpu; return the ELF path."""
    gcc = find("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cases.h").write_text(cases_header(cases))
    (out_dir / "kernels_portable.c").write_text(render_kernels("portable"))
    (out_dir / "kernels_variant.c").write_text(render_kernels(cpu.variant))
    common = [*cpu.cflags, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
              "-ffunction-sections", "-fdata-sections",
              f"-I{out_dir}", f"-I{BENCH_DIR}", f"-I{INCLUDE_DIR}"]
    # startup.c defines memcpy and memset: -ffreestanding keeps GCC from calling them there.
    units = [(BENCH_DIR / "startup.c", ["-ffreestanding"]), (BENCH_DIR / f"{program}.c", []),
             (out_dir / "kernels_variant.c", []),
             (out_dir / "kernels_portable.c", [f"-D{name}=portable_{name}" for name in EXPORTED])]
    if program == "bench_main":
        units.append((BENCH_DIR / "naive.c", []))
    objects = []
    for source, extra in units:
        obj = out_dir / (source.stem + ".o")
        run_tool([gcc, *common, *extra, "-c", str(source), "-o", str(obj)], f"compiling {source.name}")
        objects.append(str(obj))
    elf = out_dir / f"{program}-{cpu.name}.elf"
    run_tool([gcc, *cpu.cflags, "-nostdlib", "-nostartfiles", "-Wl,--gc-sections",
              f"-L{BENCH_DIR}", f"-T{BENCH_DIR / (cpu.machine + '.ld')}", *objects, "-lgcc",
              "-o", str(elf)], "linking")
    return elf


def run_tool(command: list[str], step: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise GuestError(f"{step} failed:\n$ {' '.join(command)}\n{result.stdout}{result.stderr}")


def run_image(cpu: Cpu, elf: Path, cwd: Path, timeout: float = 600) -> str:
    """Run elf under QEMU with -icount shift=0 and semihosting; return its output."""
    qemu = find("qemu-system-arm", "qemu-system-arm")
    command = [qemu, "-M", cpu.machine, "-nographic", "-monitor", "none", "-serial", "none",
               "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
               "-kernel", str(elf)]
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise GuestError(f"{elf.name} on {cpu.machine} did not finish in {timeout} s") from error
    if result.returncode != 0 or "DONE" not in result.stdout:
        raise GuestError(f"{elf.name} on {cpu.machine} exited with {result.returncode}:\n"
                         f"{result.stdout}")
    return result.stdout


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
    ns_per_tick = 1e9 / cpu.clock_hz
    calibration, runs, empty = [], {}, 0
    for line in text.splitlines():
        fields = line.split()
        if fields[:1] == ["CAL"]:
            iterations, ticks = int(fields[1]), int(fields[2])
            expected = 2 * iterations + 1
            calibration.append({"iterations": iterations, "expected_instructions": expected,
                                "measured_instructions": ticks * ns_per_tick,
                                "ratio": ticks * ns_per_tick / expected})
        elif fields[:1] == ["EMPTY"]:
            empty = int(fields[1]) * ns_per_tick
        elif fields[:1] == ["RUN"]:
            index, kernel, ticks, same = map(int, fields[1:5])
            runs[(index, kernel)] = (ticks * ns_per_tick, same == 1)
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
