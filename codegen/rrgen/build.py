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
  report.md       the same for people
  qmodel.npz      the integer model, for run --check (numpy arrays, no pickle)
  build.json      the board, the checkpoint, the weight bits per layer and the model id

With --bits auto, budget.py measures the flash left for block weights, and precision.py
chooses INT4 or INT8 for each block linear. The final link is checked against the budget.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import (__version__, boards, budget, calibrate, emit, frontend, hostrun, plan, quantize,
               toolchain)
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
    cfg, graph = qm.config, qm.graph
    per_block = {}
    for node in graph.nodes:
        if node.op == "linear":
            rows = graph.values[node.inputs[0]].shape[0]
            per_block[node.name] = rows * node.attrs["in_features"] * node.attrs["out_features"]
        elif node.op == "attention":
            # q k^T and p v: two [positions x positions x head_dim] products per head.
            rows = graph.values[node.inputs[0]].shape[0]
            per_block[node.name] = 2 * rows * rows * node.attrs["heads"] * node.attrs["head_dim"]
    n_l, n_h = cfg.net_layers
    calls = cfg.H_cycles * (cfg.L_cycles * n_l + (n_h or n_l))
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
        "arena": {"bytes": layout.arena_bytes, "lower_bound_bytes": layout.lower_bound_bytes,
                  "no_reuse_bytes": layout.no_reuse_bytes, "carry_bytes": 2 * layout.carry_bytes,
                  "block_timeline": layout.block.timeline()},
        "graph": qm.graph.describe(),
        "layer_scales": {name: {value: (list(s) if isinstance(s, tuple) else s)
                                for value, s in scales.items()}
                         for name, scales in qm.scales.items() if isinstance(scales, dict)},
        "macs": macs_per_step(qm),
        "weight_bytes": weight_bytes(qm),
        "sections": linked["sections"],
        "regions": regions,
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
    a = report["arena"]
    lines += ["", f"Arena: {a['bytes']} bytes (lower bound {a['lower_bound_bytes']}, "
              f"without reuse {a['no_reuse_bytes']}); the carry y and z take {a['carry_bytes']}.",
              "", "Block body plan:", "", "```", a["block_timeline"], "```", "",
              f"Weights: {report['weight_bytes']} bytes in the blocks.", "",
              "## Block graph (traced with torch.fx, run once per layer)", "", "```",
              report["graph"], "```", "",
              "## MACs per supervision step", "", "| layer | MACs per block call |", "|---|---|"]
    for name, macs in report["macs"]["per_block"].items():
        lines.append(f"| {name} | {macs} |")
    m = report["macs"]
    lines += ["", f"{m['block_calls_per_step']} block calls per step, heads {m['heads']}: "
              f"**{m['total']} MACs per supervision step**.", "",
              "## Quantization error (relative Frobenius norm per weight)", "",
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
    """
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
        used, part = linked["regions"][board.placement.code], "firmware"
    if used > flash_budget:
        raise BuildError(f"the {part} use {used} bytes, over the flash budget of {flash_budget} "
                         f"bytes on board {board.name!r}; raise --flash-budget, use --bits auto "
                         "or 4, or use a smaller model")


def build(model_path: str | Path | None, board_name: str, bits: int | str, out_dir: str | Path,
          calibration_puzzles: int = 64, command: str | None = None,
          public_config: str | Path | None = None, task: str | None = None,
          flash_budget: int | None = None,
          layer_bits: dict[str, int] | None = None) -> BuildResult:
    """Quantize, emit, compile, link and report into out_dir; see the module docstring.

    bits: 4, 8 or "auto" (each block linear INT4 or INT8, chosen by precision.py to fit
    flash_budget). flash_budget: flash bytes the firmware may use (default: all of the
    board's flash); on the host it bounds the block weights. layer_bits sets single
    layers' bits by hand (keys as QModel.errors), with bits as the default.
    """
    board = boards.load_board(board_name)
    check_build_options(board, bits, flash_budget, layer_bits)
    if calibration_puzzles < 1:
        raise BuildError(f"--calibration {calibration_puzzles} is invalid; use 1 or more puzzles")
    check_out_dir(Path(out_dir))
    model = frontend.load_model(model_path, public_config, task)
    model_path = Path(model.source_path)
    if task is not None and task != model.config.task:
        raise BuildError(f"--task {task} does not match the model, which was made for "
                         f"{model.config.task!r}; pass --task {model.config.task} or another model")
    command = command or " ".join(shlex.quote(a) for a in ["python", "-m", "rrgen", *sys.argv[1:]])
    out_dir = Path(out_dir)

    tokens, ids = calibrate.calibration_data(model.config, calibration_puzzles)
    try:
        graph, stats = quantize.calibrate_model(model, calibration_tokens=tokens,
                                                calibration_ids=ids)
    except calibrate.CalibrationError as err:
        raise BuildError(f"model {str(model_path)!r}: {err}") from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        auto = None
        if bits == "auto":
            auto = budget.choose_for_board(model, graph, stats, board, flash_budget,
                                           (tokens, ids), staging / "probe")
            shutil.rmtree(staging / "probe", ignore_errors=True)
            qm = quantize.quantize_with_stats(model, graph, stats, 8, auto.choice.layer_bits)
        else:
            qm = quantize.quantize_with_stats(model, graph, stats, bits, layer_bits)
        layout = plan.plan_arena(qm)
        log.info("arena %d bytes (lower bound %d, without reuse %d)", layout.arena_bytes,
                 layout.lower_bound_bytes, layout.no_reuse_bytes)

        label = precision_label(qm)
        name = f"{model_path.stem}-{label.lower().replace(' ', '-')}"
        provenance = [f"rrgen commit {git_commit()}", f"command: {command}",
                      f"checkpoint {model_path.name} sha256 {sha256_file(model_path)}",
                      f"weights {label} per channel{' (--bits auto)' if auto else ''}, "
                      f"{calibration_puzzles} calibration puzzles, model id 0x{qm.model_id():08x}"]
        files = emit.render(qm, layout, name[:32], provenance)
        linked = link_firmware(board, qm, files, staging)
        check_flash_budget(board, qm, linked, flash_budget)

        quantize.save_qmodel(qm, staging / "qmodel.npz")
        report = make_report(qm, layout, board, linked, files,
                             None if auto is None else auto.report())
        (staging / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        (staging / "report.md").write_text(report_markdown(report, command))
        (staging / "build.json").write_text(json.dumps({
            "model": str(model_path.resolve()), "bits": bits, "layer_bits": qm.layer_bits(),
            "flash_budget": flash_budget, "board": board.name,
            "task": qm.config.task, "seq_len": qm.config.seq_len,
            "num_puzzle_identifiers": qm.config.num_puzzle_identifiers,
            "calibration_puzzles": calibration_puzzles, "model_id": qm.model_id(),
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
