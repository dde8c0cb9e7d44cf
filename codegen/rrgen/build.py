"""Build firmware for a board: quantize, plan, emit, compile, link and report.

Pipeline stage: quantize -> plan -> emit -> build. Everything is written into a
temporary folder beside the output folder and moved into place only when the build
succeeded, so a failed build never leaves a half-written output folder.

Output folder contents:
  src/            the generated sources (model.c, weights.c, kernels.c, rr_model_config.h,
                  and weights.S, which includes weights.bin: see blob.py)
  firmware.elf    (Arm boards) with firmware.bin, firmware.map, firmware.ld
  firmware        (host) the protocol over stdin/stdout; batch, the bulk runner
  report.json     flash and RAM by section, arena, MACs, quantization errors, per-layer
                  weight bits (with --bits auto also sensitivities, budget and fidelity)
                  (with --count-instructions also measured instructions per linear layer)
  report.md       the same for people
  qmodel.npz      the integer model, for run --check (numpy arrays, no pickle)
  build.json      the board, the checkpoint, the weight bits per layer and the model id

With --bits auto, budget.py measures the flash left for block weights, and precision.py
chooses INT4 or INT8 for each block linear. The final link is checked against the budget.

With --count-instructions (count_instructions=True), after the link icount.py times every
linear layer of the block and the two heads, with the layer's shape and the board's kernel
variant, in one QEMU run under -icount on the board's QEMU machine (mps2-an500 for
stm32h7), and report.json ("instructions") and report.md list the instructions per call,
per MAC and per supervision step. The host board is rejected.

With `rrgen -v`, each stage (load, calibrate, quantize, plan+emit, compile+link, finish)
logs one line "stage NAME: S s, peak RSS M MiB": its wall time, and the peak resident
memory of the Python process during that stage. When the process reached a new peak
(VmHWM) in the stage, that figure is exact; otherwise it is the largest VmRSS of samples
taken every 5 ms. Compiler processes are not included; tools/bench_build.py measures them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import (__version__, blob, boards, budget, calibrate, emit, frontend, hostrun, icount,
               plan, quantize, toolchain)
from .precision import precision_table
from .quantize import QModel

log = logging.getLogger("rrgen.build")


class BuildError(ValueError):
    """A build that cannot succeed as asked; the message names the cause and the fix."""


@dataclass
class BuildResult:
    out_dir: Path
    report: dict
    qmodel: QModel


def _rss_kib(field: str) -> int:
    """Return a memory field of /proc/self/status (VmRSS, VmHWM) in KiB, or 0 without /proc."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@contextmanager
def stage(name: str):
    """Log the wall time and the peak RSS of one build stage (see the module docstring)."""
    if not log.isEnabledFor(logging.INFO):
        yield
        return
    hwm_before, peak, done = _rss_kib("VmHWM"), [_rss_kib("VmRSS")], threading.Event()

    def sample():
        while not done.wait(0.005):
            peak[0] = max(peak[0], _rss_kib("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        hwm = _rss_kib("VmHWM")
        # A new process peak in this stage is exact; otherwise the 5 ms samples tell.
        stage_peak = hwm if hwm > hwm_before else max(peak[0], _rss_kib("VmRSS"))
        log.info("stage %s: %.2f s, peak RSS %.0f MiB", name, seconds, stage_peak / 1024)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(emit.REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def macs_per_step(qm: QModel) -> dict:
    """Multiply-accumulates per supervision step, per layer kind and in total."""
    cfg = qm.config
    per_block = calibrate.block_macs(qm.graph)
    calls = calibrate.block_calls_per_step(cfg)
    heads = cfg.seq_len * cfg.hidden_size * cfg.vocab_size + cfg.hidden_size * 2
    return {"per_block": per_block, "block_calls_per_step": calls,
            "heads": heads, "total": sum(per_block.values()) * calls + heads}


def weight_bytes(qm: QModel) -> int:
    total = 0
    for block in qm.blocks:
        for p in block.values():
            if isinstance(p, quantize.QLinear):
                rows, cols = p.weight.shape
                total += rows * ((cols + 1) // 2 if p.bits == 4 else cols)
    return total


def precision_label(qm: QModel) -> str:
    """Name the weight precision: "INT8" or "INT4" when uniform, "INT4 and INT8" for a mixture."""
    return "INT4 and INT8" if qm.is_mixed() else f"INT{qm.bits}"


def plan_for_board(qm: QModel, board) -> plan.ArenaLayout:
    """Plan the arena into the board's arena region, or split it over placement.arena_regions.

    Raises BuildError (from the planner's message) when the arena fits no region or split.
    """
    if board.is_host:
        return plan.plan_arena(qm)
    placement = board.placement
    try:
        return plan.plan_arena(qm, board.arena_space(placement.arena),
                               tuple(board.arena_space(name) for name in placement.arena_regions))
    except plan.PlanError as err:
        raise BuildError(f"board {board.name}: {err}") from None


def arena_report(layout: plan.ArenaLayout) -> dict:
    """Collect the arena part of report.json: totals, and bytes per arena array and region."""
    return {"bytes": layout.arena_bytes, "lower_bound_bytes": layout.lower_bound_bytes,
            "greedy_by_size_bytes": layout.greedy_bytes,
            "no_reuse_bytes": layout.no_reuse_bytes, "carry_bytes": 2 * layout.carry_bytes,
            "arrays": [{"region": a.region, "symbol": a.symbol, "section": a.section,
                        "bytes": a.bytes, "start_bytes": a.start_bytes,
                        "available_bytes": a.available_bytes,
                        "lower_bound_bytes": a.plan.lower_bound_bytes, "method": a.plan.method,
                        "optimal": a.plan.optimal,
                        "buffers": {name: a.start_bytes + a.plan.offsets[name]
                                    for name in sorted(a.plan.offsets)}}
                       for a in layout.arenas],
            "timeline": layout.timeline()}


def make_report(qm: QModel, layout: plan.ArenaLayout, board, linked: dict, files,
                precision: dict | None = None) -> dict:
    """Collect report.json. precision is budget.AutoPrecision.report() of a --bits auto build."""
    cfg = qm.config
    regions = []
    for region in board.memory:
        used = linked["regions"].get(region.name, 0)
        regions.append({"name": region.name, "role": region.role, "origin": region.origin,
                        "length_bytes": region.length, "used_bytes": used})
    report = {
        "rrgen_version": __version__,
        "board": board.name,
        "weight_bits": qm.bits,
        "weight_precision": precision_label(qm),
        "layer_bits": qm.layer_bits(),
        "model_id": f"0x{qm.model_id():08x}",
        "config": json.loads(cfg.to_json()),
        "arena": arena_report(layout),
        "graph": qm.graph.describe(),
        "layer_scales": {name: {value: (list(s) if isinstance(s, tuple) else s)
                                for value, s in scales.items()}
                         for name, scales in qm.scales.items() if isinstance(scales, dict)},
        "macs": macs_per_step(qm),
        "weight_bytes": weight_bytes(qm),
        "sections": linked["sections"],
        "regions": regions,
        "flash": flash_report(board, linked),
        "ram": ram_report(linked),
        "quantization_error": qm.errors,
        "scales": {k: v for k, v in qm.scales.items() if isinstance(v, float)},
        "generated_files": sorted(files),
    }
    if linked.get("stack") is not None:
        report["stack"] = {**linked["stack"].report(),
                           "reserved_bytes": board.placement.stack_bytes}
    if precision is not None:
        report["precision"] = precision
    return report


RAM_SECTIONS = (".data", ".bss", ".arena", ".stack")


def flash_report(board, linked: dict) -> dict | None:
    """Flash per region and the weights.bin arrays of each; None on the host."""
    if board.is_host:
        return None
    regions = [{"name": r.name, "origin": r.origin, "used_bytes": linked["regions"][r.name],
                "length_bytes": r.length} for r in board.flash_regions]
    placement = linked.get("placement") or {"internal": None, "external": []}
    return {"regions": regions, "used_bytes": flash_used(board, linked),
            "length_bytes": board.flash_bytes,
            "external_region": board.placement.external,
            "external_arrays": placement["external"]}


def ram_report(linked: dict) -> dict | None:
    """RAM the firmware reserves: .data, .bss, the arena and the stack; None on the host.

    A split arena (plan.py) adds one .arena.<region> section per region after .arena.
    """
    if not linked["sections"]:
        return None
    sizes = {name: linked["sections"].get(name, {"size": 0})["size"] for name in RAM_SECTIONS}
    split = {name: section["size"] for name, section in sorted(linked["sections"].items())
             if name.startswith(".arena.") and section["size"]}
    if split:
        sizes = {**{k: v for k, v in sizes.items() if k != ".stack"}, **split,
                 ".stack": sizes[".stack"]}
    return {"sections": sizes, "bytes": sum(sizes.values())}


def flash_markdown(report: dict) -> list[str]:
    """Format the flash-per-region and RAM lines of report.md."""
    flash, ram = report.get("flash"), report.get("ram")
    if flash is None or ram is None:
        return []
    lines = ["", "## Flash and RAM", "", "| flash region | origin | used bytes | size bytes |",
             "|---|---|---|---|"]
    for r in flash["regions"]:
        lines.append(f"| {r['name']} | 0x{r['origin']:08x} | {r['used_bytes']} | "
                     f"{r['length_bytes']} |")
    lines.append(f"| total | | {flash['used_bytes']} | {flash['length_bytes']} |")
    if flash["external_region"]:
        arrays = ", ".join(f"`{name}`" for name in flash["external_arrays"]) or "none"
        lines += ["", f"In region {flash['external_region']} (section .rr_external): "
                  f"{arrays}. Embedding rows are read through rr_flash_read (rr_flash.h)."]
    parts = " + ".join(f"{name} {size}" for name, size in ram["sections"].items())
    lines += ["", f"RAM: {parts} = **{ram['bytes']} bytes**."]
    return lines


def report_markdown(report: dict, command: str) -> str:
    lines = [f"# rrgen build report: {report['board']}, {report['weight_precision']} weights", "",
             f"Command: `{command}`", "",
             f"Model id {report['model_id']}, config `{json.dumps(report['config'])}`", "",
             "## Memory", "", "| section | address | bytes |", "|---|---|---|"]
    for name, sec in sorted(report["sections"].items(), key=lambda kv: kv[1]["address"]):
        lines.append(f"| {name} | 0x{sec['address']:08x} | {sec['size']} |")
    lines += ["", "| region | role | used bytes | size bytes |", "|---|---|---|---|"]
    for r in report["regions"]:
        lines.append(f"| {r['name']} | {r['role']} | {r['used_bytes']} | {r['length_bytes']} |")
    lines += flash_markdown(report)
    a = report["arena"]
    lines += ["", f"Arena: {a['bytes']} bytes (lower bound {a['lower_bound_bytes']}, greedy by "
              f"size {a['greedy_by_size_bytes']}, without reuse {a['no_reuse_bytes']}); the "
              f"carry y and z take {a['carry_bytes']}.", "",
              "| arena array | region | bytes | lower bound | available bytes | placed by |",
              "|---|---|---|---|---|---|"]
    for arr in a["arrays"]:
        kept_free = f" (first {arr['start_bytes']} kept free)" if arr["start_bytes"] else ""
        lines.append(f"| {arr['symbol']} ({arr['section']}) | {arr['region'] or 'host'} | "
                     f"{arr['bytes']}{kept_free} | {arr['lower_bound_bytes']} | "
                     f"{arr['available_bytes'] if arr['available_bytes'] is not None else '-'} | "
                     f"{arr['method']} |")
    lines += ["", "Arena plan of one supervision step (block body, then heads):", "", "```",
              a["timeline"], "```", "",
              f"Weights: {report['weight_bytes']} bytes in the blocks.", "",
              "## Block graph (traced with torch.fx, run once per layer)", "", "```",
              report["graph"], "```", "",
              "## MACs per supervision step", "", "| layer | MACs per block call |", "|---|---|"]
    for name, macs in report["macs"]["per_block"].items():
        lines.append(f"| {name} | {macs} |")
    m = report["macs"]
    lines += ["", f"{m['block_calls_per_step']} block calls per step, heads {m['heads']}: "
              f"**{m['total']} MACs per supervision step**.", ""]
    if "instructions" in report:
        lines += [*icount.markdown(report["instructions"]), ""]
    lines += ["## Quantization error (relative Frobenius norm per weight)", "",
              "| weight | error |", "|---|---|"]
    for name, err in report["quantization_error"].items():
        lines.append(f"| {name} | {err:.4f} |")
    if "precision" in report:
        lines += ["", *precision_markdown(report["precision"])]
    return "\n".join(lines) + "\n"


def precision_markdown(p: dict) -> list[str]:
    """Format the "Precision" section of report.md for a --bits auto build."""
    if p["flash_budget_bytes"] is None:
        against = "no flash budget (host board), so every layer stays INT8"
    elif p["other_flash_bytes"] is None:
        against = f"a weight budget of {p['weight_budget_bytes']} bytes (--flash-budget on the host)"
    else:
        against = (f"a weight budget of {p['weight_budget_bytes']} bytes: the flash budget of "
                  f"{p['flash_budget_bytes']} bytes minus {p['other_flash_bytes']} bytes for "
                  f"the rest of the firmware and a {p['alignment_margin_bytes']}-byte "
                  "alignment margin")
    return ["## Precision (--bits auto)", "",
            f"{p['int4_layers']} of {p['layers']} block linears are INT4. Block weights take "
            f"{p['weight_bytes']} bytes against {against}.", "",
            f"Carry fidelity (mean cosine of the integer carry y with fp32 over every "
            f"supervision step of {p['fidelity_puzzles']} calibration puzzles): "
            f"{p['fidelity']:.4f}; all INT8: {p['int8_fidelity']:.4f}. Sensitivity is the "
            "fidelity lost when only that layer is INT4; layers were demoted in order of "
            "sensitivity per byte saved.", "",
            precision_table(p["layer_bits"], p["layer_weight_bytes"], p["sensitivity"]).rstrip()]


def _fit_error(board, link_error: str, all_int4: bool) -> BuildError:
    # ld's "region `flash' overflowed by N bytes" names how much is missing: prefer it.
    lines = link_error.splitlines()
    reason = next((line for line in lines if "overflowed by" in line), None)
    reason = reason or next((line for line in lines if "rrgen:" in line or
                             "will not fit" in line), lines[-1])
    fix = "use a smaller model or a board with more memory"
    if not all_int4:
        fix = "use --bits 4, a smaller model, or a board with more memory"
    return BuildError(f"the model does not fit board {board.name!r}: {reason.strip()}; {fix}")


def calibration_note(stats, asked: int, steps: int) -> str:
    """Describe the calibration that ran, e.g. "1 of 8 calibration puzzles (budget)"."""
    if (stats.puzzles, stats.steps) == (asked, steps):
        return f"{asked} calibration puzzles"
    return (f"{stats.puzzles} of {asked} calibration puzzles x {stats.steps} of {steps} "
            "steps (calibration MAC budget)")


def check_out_dir(out_dir: Path) -> None:
    """Fail before any work when out_dir cannot receive a build, or contains something else.

    An existing folder is replaced only when it is empty or an earlier rrgen build (it
    contains build.json), so a mistyped --out never deletes a user's files.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"output path {str(out_dir)!r} is a file; pass a folder to --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "build.json").is_file():
        raise BuildError(f"output folder {str(out_dir)!r} exists and is not an rrgen build; "
                         "choose another --out or empty it")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=parent))
        probe.rmdir()
    except OSError as err:
        raise BuildError(f"cannot write the output folder {str(out_dir)!r}: {err.strerror}; "
                         "pass a writable --out") from None


def check_build_options(board, bits, flash_budget, layer_bits) -> None:
    """Reject --bits and --flash-budget values before any work, naming the value and the fix."""
    if bits not in (4, 8, "auto"):
        raise BuildError(f"--bits {bits} is not supported; use 4, 8 or auto")
    if layer_bits is not None and bits == "auto":
        raise BuildError("layer_bits and --bits auto both set the weight bits; pass only one")
    if flash_budget is None:
        return
    if isinstance(flash_budget, bool) or not isinstance(flash_budget, int) or flash_budget < 1:
        raise BuildError(f"--flash-budget {flash_budget} is invalid; use a positive number "
                         "of bytes")
    if not board.is_host and flash_budget > board.flash_bytes:
        raise BuildError(f"--flash-budget {flash_budget} exceeds the {board.flash_bytes} bytes "
                         f"of flash on board {board.name!r}; use at most that")


def link_firmware(board, qm: QModel, files: dict[str, str | bytes], folder: Path) -> dict:
    """Write the generated sources to folder/src and link folder/firmware for board.

    Returns toolchain.compile_and_link's result. A link that overflows a memory region
    raises BuildError naming the region, and the bytes missing where ld reports them.

    On a board with an external region ([placement] external) the result also has
    "placement": {"internal": [...], "external": [...]}, the weights.bin arrays in each
    region (see place_arrays).
    """
    if board.is_host or board.placement.external is None:
        return _link(board, qm, files, folder)
    files, placement = place_arrays(board, qm, files, folder / "probe")
    linked = _link(board, qm, files, folder)
    linked["placement"] = placement
    return linked


def place_arrays(board, qm: QModel, files: dict[str, str | bytes],
                 probe_folder: Path) -> tuple[dict[str, str | bytes], dict]:
    """Choose the region of each weights.bin array; return the files with weights.S placed.

    Policy: the vector table, code, small constants and .data image stay in the code region
    (internal flash). When every array fits there too, nothing goes to the external region,
    so a board without an external chip runs the firmware ([placement] tables_external = true
    turns this off). Otherwise the embedding tables
    (blob.TABLES, read one row per token) go to the external region, and the weight arrays
    follow in weights.bin order (block weights first, then the heads), each one that still
    fits in the code region. An array that does not fit goes to the external region, but
    later smaller ones may still fill the code region. How much fits is measured, not
    estimated: a probe link with every array in the external region gives the bytes the
    rest uses in the code region. Raises BuildError naming the bytes needed and available
    when the external region is too small.
    """
    weights_s = files["weights.S"]
    arrays = blob.arrays_of(weights_s)
    names = {name for name, _, _ in arrays}
    code, external = board.region(board.placement.code), board.external_region
    # The probe's external region reaches the end of the address space, so it always fits.
    roomy = dataclasses.replace(external, length=2**32 - external.origin)
    probe_board = dataclasses.replace(board, memory=tuple(
        roomy if region.name == external.name else region for region in board.memory))
    probe = _link(probe_board, qm, {**files, "weights.S": blob.place_arrays(weights_s, names)},
                  probe_folder)
    shutil.rmtree(probe_folder, ignore_errors=True)
    rest = probe["regions"][code.name]

    free, inside = code.length - rest, []
    everything = (not board.placement.tables_external and
                  sum(blob.aligned(size) for _, size, _ in arrays) <= free)
    for name, size, _ in arrays:
        if not everything and (name in blob.TABLES or blob.aligned(size) > free):
            continue
        inside.append(name)
        free -= blob.aligned(size)
    outside = [name for name, _, _ in arrays if name not in inside]
    needed = sum(blob.aligned(size) for name, size, _ in arrays if name in outside)
    if needed > external.length:
        limit = external.max_length or external.length
        fixes = [] if set(qm.layer_bits().values()) == {4} else ["use --bits 4"]
        if needed <= limit:
            fixes.insert(0, f"pass --external-flash-bytes {needed} or more (region "
                            f"{external.name!r} maps up to {limit} bytes)")
        fix = "use a smaller model"
        if fixes:
            fix = ", ".join(fixes) + ("," if len(fixes) > 1 else "") + " or " + fix
        in_code = code.length - free
        raise BuildError(
            f"the model does not fit board {board.name!r}: it needs {in_code + needed} bytes "
            f"of flash, {in_code} in region {code.name!r} ({code.length} bytes) and {needed} "
            f"in region {external.name!r}, which has {external.length} bytes; {fix}")
    log.info("flash placement on %s: %d arrays in %s, %d in %s (%d bytes)", board.name,
             len(inside), code.name, len(outside), external.name, needed)
    placed = {**files, "weights.S": blob.place_arrays(weights_s, set(outside))}
    return placed, {"internal": inside, "external": outside}


def _link(board, qm: QModel, files: dict[str, str | bytes], folder: Path) -> dict:
    src = folder / "src"
    emit.write(files, src)
    generated = emit.compiled_sources(src)
    includes = [toolchain.FIRMWARE_INCLUDE_DIR, src]
    defines = [f"-DRR_MAX_SEQ_LEN={qm.config.seq_len}"]
    try:
        linked = toolchain.compile_and_link(board, toolchain.firmware_sources(board) + generated,
                                            includes, folder, "firmware", defines)
        if board.is_host:
            hostrun.link_batch(board, generated, src, folder, qm.config.seq_len)
    except toolchain.ToolchainError as err:
        text = str(err)
        if "linking" in text and ("rrgen:" in text or "overflow" in text or "will not fit" in text):
            all_int4 = set(qm.layer_bits().values()) == {4}
            raise _fit_error(board, text, all_int4) from None
        raise
    check_stack(board, linked)
    return linked


def flash_used(board, linked: dict) -> int:
    """Bytes of flash the linked firmware uses: its code region plus its external region."""
    return sum(linked["regions"][region.name] for region in board.flash_regions)


def check_stack(board, linked: dict) -> None:
    """Raise BuildError when the worst-case stack exceeds the board's stack reservation.

    The linker script already keeps the data, the arena and every other section below the
    reservation, so this check completes the RAM budget.
    """
    bound = linked.get("stack")
    if bound is None or board.placement is None:
        return
    if bound.bytes > board.placement.stack_bytes:
        raise BuildError(f"the worst-case stack is {bound.bytes} bytes (deepest chain "
                         f"{' -> '.join(bound.main_chain)}), over the "
                         f"{board.placement.stack_bytes}-byte stack of board {board.name!r}; "
                         f"raise placement.stack_bytes in boards/{board.name}.toml or reduce "
                         "the deepest frames")


def check_flash_budget(board, qm: QModel, linked: dict, flash_budget: int | None) -> None:
    """Raise BuildError when the linked firmware uses more flash than flash_budget.

    The host board has no flash, so there the budget bounds the block weights alone.
    """
    if flash_budget is None:
        return
    if board.is_host:
        used, part = weight_bytes(qm), "block weights"
    else:
        used, part = flash_used(board, linked), "firmware"
    if used > flash_budget:
        raise BuildError(f"the {part} use {used} bytes, over the flash budget of {flash_budget} "
                         f"bytes on board {board.name!r}; raise --flash-budget, use --bits auto "
                         "or 4, or use a smaller model")


def build(model_path: str | Path | None, board_name: str, bits: int | str, out_dir: str | Path,
          calibration_puzzles: int = 64, command: str | None = None,
          public_config: str | Path | None = None, task: str | None = None,
          flash_budget: int | None = None,
          layer_bits: dict[str, int] | None = None,
          external_flash_bytes: int | None = None,
          calibration_macs: float | None = calibrate.CALIBRATION_MAC_BUDGET,
          count_instructions: bool = False) -> BuildResult:
    """Quantize, emit, compile, link and report into out_dir; see the module docstring.

    bits: 4, 8 or "auto" (each block linear INT4 or INT8, chosen by precision.py to fit
    flash_budget). flash_budget: flash bytes the firmware may use (default: all of the
    board's flash); on the host it bounds the block weights. layer_bits sets single
    layers' bits by hand (keys as QModel.errors), with bits as the default.
    external_flash_bytes sets the length of the board's external flash region (the board
    file's length by default, at most its max_length).
    calibration_macs caps the float calibration (calibrate.plan_calibration); 0 or None
    calibrates on every puzzle and supervision step. count_instructions measures the
    linear layers' instructions under QEMU (see the module docstring).
    """
    board = boards.load_board(board_name)
    if external_flash_bytes is not None:
        try:
            board = boards.with_external_bytes(board, external_flash_bytes)
        except ValueError as err:
            raise BuildError(str(err)) from None
    check_build_options(board, bits, flash_budget, layer_bits)
    if count_instructions:
        try:
            icount.twin_cpu(board)
        except icount.GuestError as err:
            raise BuildError(str(err)) from None
    if calibration_puzzles < 1:
        raise BuildError(f"--calibration {calibration_puzzles} is invalid; use 1 or more puzzles")
    check_out_dir(Path(out_dir))
    with stage("load"):
        model = frontend.load_model(model_path, public_config, task)
    model_path = Path(model.source_path)
    if task is not None and task != model.config.task:
        raise BuildError(f"--task {task} does not match the model, which was made for "
                         f"{model.config.task!r}; pass --task {model.config.task} or another model")
    command = command or " ".join(shlex.quote(a) for a in ["python", "-m", "rrgen", *sys.argv[1:]])
    out_dir = Path(out_dir)

    with stage("calibrate"):
        tokens, ids = calibrate.calibration_data(model.config, calibration_puzzles)
        try:
            graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens,
                                                    calibration_ids=ids,
                                                    mac_budget=calibration_macs)
        except calibrate.CalibrationError as err:
            raise BuildError(f"model {str(model_path)!r}: {err}") from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        auto = None
        with stage("quantize"):
            if bits == "auto":
                auto = budget.choose_for_board(model, graph, stats, board, flash_budget,
                                               (tokens, ids), staging / "probe")
                shutil.rmtree(staging / "probe", ignore_errors=True)
                qm = quantize.quantize_with_stats(model, graph, stats, 8, auto.choice.layer_bits)
            else:
                qm = quantize.quantize_with_stats(model, graph, stats, bits, layer_bits)
        with stage("plan+emit"):
            layout = plan_for_board(qm, board)
            log.info("arena %d bytes in %s (lower bound %d, greedy by size %d, without reuse %d)",
                     layout.arena_bytes, ", ".join(a.region or "one array" for a in layout.arenas),
                     layout.lower_bound_bytes, layout.greedy_bytes, layout.no_reuse_bytes)

            label = precision_label(qm)
            name = f"{model_path.stem}-{label.lower().replace(' ', '-')}"
            used = calibration_note(stats, calibration_puzzles, model.config.halt_max_steps)
            provenance = [f"rrgen commit {git_commit()}", f"command: {command}",
                          f"checkpoint {model_path.name} sha256 {sha256_file(model_path)}",
                          f"weights {label} per channel{' (--bits auto)' if auto else ''}, "
                          f"{used}, model id 0x{qm.model_id():08x}"]
            files = emit.render(qm, layout, name[:32], provenance,
                                kernel_variant="portable" if board.is_host else board.kernels)
        with stage("compile+link"):
            linked = link_firmware(board, qm, files, staging)
        check_flash_budget(board, qm, linked, flash_budget)
        measured = None
        if count_instructions:
            with stage("count-instructions"):
                try:
                    measured = icount.measure_model(qm, board, staging / "icount")
                except icount.GuestError as err:
                    raise BuildError(str(err)) from None
                shutil.rmtree(staging / "icount", ignore_errors=True)

        with stage("finish"):
            quantize.save_qmodel(qm, staging / "qmodel.npz")
            report = make_report(qm, layout, board, linked, files,
                                 None if auto is None else auto.report())
            report["calibration"] = {"puzzles_asked": calibration_puzzles,
                                     "puzzles": stats.puzzles, "steps": stats.steps,
                                     "mac_budget": calibration_macs}
            if measured is not None:
                report["instructions"] = measured
            report_text = json.dumps(report, indent=2, sort_keys=True) + "\n"
            (staging / "report.json").write_text(report_text)
            (staging / "report.md").write_text(report_markdown(report, command))
            (staging / "build.json").write_text(json.dumps({
                "model": str(model_path.resolve()), "bits": bits, "layer_bits": qm.layer_bits(),
                "flash_budget": flash_budget, "board": board.name,
                "external_flash_bytes": external_flash_bytes,
                "task": qm.config.task, "seq_len": qm.config.seq_len,
                "num_puzzle_identifiers": qm.config.num_puzzle_identifiers,
                "calibration_puzzles": calibration_puzzles,
                "calibration_used": [stats.puzzles, stats.steps], "model_id": qm.model_id(),
                "firmware": "firmware" if board.is_host else "firmware.elf",
                "qemu_machine": board.qemu_machine}, indent=2) + "\n")

            # Move into place only now: replace an older build of the same folder.
            check_out_dir(out_dir)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.chmod(0o755)
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out_dir, report, qm)


def load_build(out_dir: str | Path, board: str | None = None) -> dict:
    """Read build.json of a finished build; raise BuildError naming the fix when absent."""
    path = Path(out_dir) / "build.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise BuildError(f"no build found in {str(out_dir)!r} (missing build.json); run "
                         f"`python -m rrgen build --board {board or 'BOARD'} --out {out_dir}` "
                         "first") from None
    except (OSError, json.JSONDecodeError) as err:
        raise BuildError(f"build record {str(path)!r} is unreadable ({err}); rebuild") from None
    info["dir"] = Path(out_dir)
    return info


def load_reference(info: dict) -> QModel:
    """Load the integer model of a build and check it against the build's model id."""
    qm = quantize.load_qmodel(info["dir"] / "qmodel.npz")
    if qm.model_id() != info["model_id"]:
        raise BuildError(f"{info['dir']}/qmodel.npz has model id 0x{qm.model_id():08x}, the "
                         f"build has 0x{info['model_id']:08x}; rebuild the folder")
    return qm
