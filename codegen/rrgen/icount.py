"""Guest instruction counts of the linear kernels under QEMU (-icount shift=0).

Used by `build --count-instructions` (measure_model) and by tools/bench_kernels.py and
tests/test_kernel_variants.py (the image builder and runner below).

The harness is the bare-metal semihosting image of firmware/bench/: startup.c, one main
program (bench_main.c times kernels, kernel_test.c checks them), and the kernels rendered
from templates/kernels.c.j2 twice, once as the board's variant and once as the portable
copy. The image runs once under `qemu-system-arm -icount shift=0`. There every guest
instruction advances QEMU's virtual clock by 1 ns, and SysTick counts that clock at the
core clock of the machine, so instructions = ticks x 1e9 / clock, to within one tick.
A loop of known length (2 n + 1 instructions) checks this conversion in the same run.

measure_model times each block linear layer and the two heads of a quantized model, with
the board's kernel variant only, on seeded random data of the layer's shape (rows,
in_features, out_features, weight bits, bias, int8 or int16 output). It runs on the
board's QEMU machine. A board that QEMU does not emulate runs on the machine with the same
core (the "twin": mps2-an500 for a Cortex-M7). Small layers are repeated so that one SysTick tick
is a small part of the count. The counts are of the kernel call alone, not cycles: QEMU
counts each instruction once, whatever it costs on the core.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from . import calibrate
from .emit import REPO_ROOT, environment

BENCH_DIR = REPO_ROOT / "firmware" / "bench"
INCLUDE_DIR = REPO_ROOT / "firmware" / "include"
# Every function that kernels.c exports: the portable copy gets a portable_ prefix.
EXPORTED = ("rr_linear_s8", "rr_linear_s4", "rr_linear_s8_s16", "rr_glu_s8",
            "rr_add_rmsnorm_s8", "rr_add_s8", "rr_transpose_s8", "rr_argmax_s16")
MAX_FEATURES = 1536       # RR_MAX_FEATURES and RR_VARIANT_MAX_IN of the images
# Limits of firmware/bench/bench_main.c's buffers (MAX_IN_BYTES etc.).
MAX_IN_BYTES = 97 * 1536
MAX_WEIGHT_BYTES = 1536 * 512
MAX_OUT_BYTES = 97 * 1536
MAX_CHANNELS = 1536
# A small layer is timed over REPEAT_MACS // MACs calls (at most MAX_REPEATS).
REPEAT_MACS = 1_000_000
MAX_REPEATS = 1000


@dataclass(frozen=True)
class Cpu:
    name: str
    core: str             # the board files' cpu
    machine: str          # QEMU -M
    cflags: tuple[str, ...]
    variant: str          # kernel variant of kernels.c.j2
    clock_hz: int         # SysTick clock = core clock of the QEMU machine
    floor: float          # instructions per MAC of the widest multiply-accumulate
    targets: dict         # bits -> instructions per MAC to reach


CPUS = {
    "m7": Cpu("m7", "cortex-m7", "mps2-an500",
              ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"), "dsp",
              25_000_000, 0.5, {8: 1.5, 4: 2.5}),
    "m55": Cpu("m55", "cortex-m55", "mps3-an547",
               ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"), "mve", 32_000_000,
               1 / 16, {8: 0.25, 4: 0.3}),
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
    out16: int = 0        # 1: rr_linear_s8_s16 (int16 output, the heads); bench_main only
    repeats: int = 1      # calls per timed chunk; bench_main only

    @property
    def macs(self) -> int:
        return self.rows * self.in_features * self.out_features

    @property
    def label(self) -> str:
        return f"{self.rows}x{self.in_features}->{self.out_features}"

    def fits(self) -> bool:
        """True when the layer fits bench_main's buffers."""
        row_bytes = (self.in_features + 1) // 2 if self.bits == 4 else self.in_features
        out_bytes = self.rows * self.out_features * (2 if self.out16 else 1)
        return (self.rows * self.in_features <= MAX_IN_BYTES and out_bytes <= MAX_OUT_BYTES
                and self.out_features * row_bytes <= MAX_WEIGHT_BYTES
                and self.out_features <= MAX_CHANNELS and self.in_features <= MAX_FEATURES)


class GuestError(RuntimeError):
    """A build or a QEMU run of a test or benchmark image that failed."""


def find(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise GuestError(f"{tool} not found on PATH; install the Debian package {package}")
    return path


def cases_header(cases: list[Case], variant_only: bool = False) -> str:
    rows = ",\n".join(f"    {{ {c.rows}, {c.in_features}, {c.out_features}, {c.bits}, "
                      f"{c.has_bias}, {c.shift_lo}, {c.shift_hi}, {c.out16}, {c.repeats} }}"
                      for c in cases)
    return ("/* Written by codegen/rrgen/icount.py. */\n"
            f"#define BENCH_FIRST_KERNEL {2 if variant_only else 0}\n"
            f"static const bench_case_t cases[] = {{\n{rows}\n}};\n")


def render_kernels(variant: str) -> str:
    return environment().get_template("kernels.c.j2").render(
        banner=f"/* rendered by codegen/rrgen/icount.py, variant {variant} */",
        linear_kinds=["s4", "s8"], max_features=MAX_FEATURES, has_attention=False,
        kernel_variant=variant, max_in_features=MAX_FEATURES)


def build_image(cpu: Cpu, program: str, cases: list[Case], out_dir: Path,
                variant_only: bool = False) -> Path:
    """Compile and link firmware/bench/<program>.c for cpu; return the ELF path.

    variant_only (bench_main): time only cpu.variant, not the naive loop and the portable
    kernel, and compare no outputs.
    """
    gcc = find("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cases.h").write_text(cases_header(cases, variant_only))
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


def parse_lines(text: str, cpu: Cpu) -> dict:
    """Read bench_main's CAL, EMPTY and RUN lines, ticks already turned into instructions.

    Returns {"calibration": [...], "empty": instructions, "runs": {(case, kernel):
    (instructions of all calls, same)}}; same is None where outputs were not compared.
    """
    ns_per_tick = 1e9 / cpu.clock_hz
    calibration, runs, empty = [], {}, 0.0
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
            index, kernel, ticks = map(int, fields[1:4])
            same = None if fields[4] == "-" else fields[4] == "1"
            runs[(index, kernel)] = (ticks * ns_per_tick, same)
    return {"calibration": calibration, "empty": empty, "runs": runs}


# ---------------------------------------------------------------------------------------
# build --count-instructions
# ---------------------------------------------------------------------------------------

def twin_cpu(board) -> Cpu:
    """Return the QEMU CPU entry that runs board's kernels; raise GuestError if none does."""
    if board.is_host:
        raise GuestError(f"--count-instructions needs an Arm board that QEMU emulates; board "
                         f"{board.name!r} builds for the host CPU, so pass --board mps2-an500, "
                         "corstone300 or stm32h7")
    for cpu in CPUS.values():
        if board.qemu_machine in (None, cpu.machine) and board.cpu == cpu.core:
            return replace(cpu, variant=board.kernels, cflags=tuple(board.cflags))
    known = ", ".join(f"{c.core} ({c.machine})" for c in CPUS.values())
    raise GuestError(f"--count-instructions: board {board.name!r} (cpu {board.cpu}, QEMU "
                     f"machine {board.qemu_machine or 'none'}) has no QEMU twin; this works "
                     f"for {known}; build without --count-instructions")


def model_layers(qm) -> list[dict]:
    """List every block linear and the two heads: name, shape, calls per supervision step."""
    cfg = qm.config
    z_blocks, y_blocks = calibrate.net_layers(cfg)
    calls = [0] * len(qm.blocks)
    for layer in z_blocks:
        calls[layer] += cfg.H_cycles * cfg.L_cycles
    for layer in y_blocks:
        calls[layer] += cfg.H_cycles
    assert sum(calls) == calibrate.block_calls_per_step(cfg)
    layers = []
    for layer, block in enumerate(qm.blocks):
        for node in qm.graph.nodes:
            if node.op != "linear":
                continue
            p = block[node.name]
            rows = qm.graph.values[node.inputs[0]].shape[0]
            layers.append({"layer": f"L{layer}.{node.attrs['weight']}", "node": node.name,
                           "case": Case(rows, node.attrs["in_features"],
                                        node.attrs["out_features"], p.bits,
                                        int(p.bias is not None)),
                           "calls_per_step": calls[layer]})
    for name, head, rows in (("lm_head", qm.lm_head, cfg.seq_len), ("q_head", qm.q_head, 1)):
        out_features, in_features = head.weight.shape
        layers.append({"layer": name, "node": name,
                       "case": Case(rows, in_features, out_features, head.bits,
                                    int(head.bias is not None), out16=1),
                       "calls_per_step": 1})
    return layers


def with_repeats(case: Case) -> Case:
    return replace(case, repeats=max(1, min(MAX_REPEATS, REPEAT_MACS // max(1, case.macs))))


def measure_model(qm, board, work: Path, timeout: float = 300) -> dict:
    """Time every linear layer of qm with board's kernels in one QEMU run; see the docstring.

    Returns the "instructions" part of report.json. Raises GuestError when the board has
    no QEMU twin, a tool is missing, a layer is too large for the harness or QEMU fails.
    """
    cpu = twin_cpu(board)
    layers = model_layers(qm)
    cases = sorted({with_repeats(entry["case"]) for entry in layers},
                   key=lambda c: (c.rows, c.in_features, c.out_features, c.bits, c.has_bias,
                                  c.out16))
    too_big = [c.label for c in cases if not c.fits()]
    if too_big:
        raise GuestError(f"--count-instructions: layer {too_big[0]} is larger than the "
                         "harness buffers of firmware/bench/bench_main.c (at most 97 x 1536 "
                         "inputs, 1536 x 512 weights); build without --count-instructions")
    elf = build_image(cpu, "bench_main", cases, work, variant_only=True)
    parsed = parse_lines(run_image(cpu, elf, work, timeout), cpu)
    per_call = {c: parsed["runs"][(i, 2)][0] / c.repeats for i, c in enumerate(cases)}
    rows, total = [], 0.0
    for entry in layers:
        case = with_repeats(entry["case"])
        instructions = per_call[case]
        step = instructions * entry["calls_per_step"]
        total += step
        rows.append({"layer": entry["layer"], "node": entry["node"], "rows": case.rows,
                     "in_features": case.in_features, "out_features": case.out_features,
                     "bits": case.bits, "bias": bool(case.has_bias),
                     "output": "int16" if case.out16 else "int8",
                     "kernel": "rr_linear_s8_s16" if case.out16 else f"rr_linear_s{case.bits}",
                     "macs_per_call": case.macs, "calls_per_step": entry["calls_per_step"],
                     "repeats_timed": case.repeats,
                     "instructions_per_call": round(instructions),
                     "instructions_per_mac": round(instructions / case.macs, 4),
                     "instructions_per_step": round(step)})
    macs = sum(r["macs_per_call"] * r["calls_per_step"] for r in rows)
    return {"what": "QEMU guest instruction counts (-icount shift=0) of each linear kernel "
                    "call alone, on seeded random data of the layer's shape; not cycles",
            "qemu_machine": cpu.machine, "twin_of": None if board.qemu_machine else board.name,
            "cpu": cpu.core, "kernel_variant": cpu.variant,
            "tick_instructions": 1e9 / cpu.clock_hz,
            "calibration": parsed["calibration"], "layers": rows,
            "linear_macs_per_step": macs,
            "total_per_step": round(total),
            "total_per_mac": round(total / macs, 4) if macs else None}


def markdown(ic: dict) -> list[str]:
    """Format the "Instructions per linear layer" section of report.md."""
    where = ic["qemu_machine"] + (f", the QEMU twin of {ic['twin_of']}" if ic["twin_of"] else "")
    lines = ["## Instructions per linear layer (QEMU, kernel alone, not cycles)", "",
             f"Measured with `--count-instructions` on QEMU {where} ({ic['cpu']}, "
             f"{ic['kernel_variant']} kernels) under `-icount shift=0`: guest instructions of "
             "each kernel call alone, on seeded random data of the layer's shape, to within "
             f"one SysTick tick ({ic['tick_instructions']:.0f} instructions) per timed "
             "batch. QEMU counts instructions, not cycles. Attention, norms, GLU and the "
             "other glue code are not counted.", "",
             "| layer | kernel | rows x in -> out | MACs per call | instructions per call | "
             "per MAC | calls per step | instructions per step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in ic["layers"]:
        lines.append(f"| {r['layer']} | {r['kernel']} | {r['rows']} x {r['in_features']} -> "
                     f"{r['out_features']} | {r['macs_per_call']} | "
                     f"{r['instructions_per_call']} | {r['instructions_per_mac']:.3f} | "
                     f"{r['calls_per_step']} | {r['instructions_per_step']} |")
    lines += ["", f"Linear layers: **{ic['total_per_step']} instructions per supervision "
              f"step** for {ic['linear_macs_per_step']} MACs "
              f"({ic['total_per_mac']:.3f} per MAC)."]
    return lines
