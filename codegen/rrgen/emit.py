"""Emit C sources for a quantized model from the Jinja2 templates in templates/.

Pipeline stage: plan -> emit -> build. Rendering is table driven: EMITTERS maps each IR
op to the kernel call it becomes, so a new op is one entry. Output is deterministic: the
same QModel and provenance give byte-identical files.

The weight matrices, embedding tables and RoPE tables go into weights.bin, which
weights.S includes with `.incbin`. weights.c declares them and keeps the small arrays and
the parameter structs as C initializers. blob.py explains that choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np

from . import __version__, blob
from .boards import KERNEL_VARIANTS
from .calibrate import net_layers
from .fixedpoint import EXP_HI, EXP_LO, EXP_MAX
from .plan import ArenaLayout, scratch_name
from .quantize import QAdd, QAddNorm, QAttention, QGlu, QLinear, QModel, pack_int4

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / "templates"
FIRMWARE_DIR = REPO_ROOT / "firmware"

TEMPLATES = {
    "rr_model_config.h": "model_config.h.j2",
    "weights.c": "weights.c.j2",
    "weights.S": "weights.S.j2",
    "model.c": "model.c.j2",
    "kernels.c": "kernels.c.j2",
}


def environment() -> jinja2.Environment:
    if not TEMPLATE_DIR.is_dir():
        raise FileNotFoundError(f"template folder {TEMPLATE_DIR} not found; run rrgen from a "
                                "checkout of the repository (pip install -e .)")
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              autoescape=False)


def c_name(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def format_ints(values, per_line: int = 24, indent: str = "    ") -> str:
    """C initializer body: a flat list, or one braced row per line for a 2-D array."""
    values = np.asarray(values)
    if values.ndim == 2:
        rows = [format_ints(row, per_line, indent + "    ") for row in values]
        return ",\n".join(f"{indent}{{\n{row}\n{indent}}}" for row in rows)
    flat = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join(indent + line for line in lines)


@dataclass
class CArray:
    name: str
    ctype: str
    dims: str
    body: str
    size_bytes: int
    comment: str


class WeightTable:
    """Collects the const arrays of weights.c, and the large ones of weights.bin in `blob`."""

    def __init__(self):
        self.arrays: list[CArray] = []
        self.blob = blob.WeightBlob()

    def add(self, name: str, values: np.ndarray, ctype: str, comment: str,
            dims: str | None = None) -> str:
        values = np.asarray(values)
        itemsize = {"int8_t": 1, "int16_t": 2, "int32_t": 4}[ctype]
        self.arrays.append(CArray(name, ctype, dims or f"[{values.size}]",
                                  format_ints(values.reshape(-1)),
                                  values.size * itemsize, comment))
        return name

    def linear(self, prefix: str, p: QLinear, comment: str) -> str:
        """Arrays of a linear layer; returns its rr_linear_t initializer."""
        if p.bits == 4:
            packed = pack_int4(p.weight).view(np.int8)
            w = self.blob.add(f"{prefix}_weight", packed, "int8_t",
                              f"{comment}: INT4 weights [{p.weight.shape[0]}, "
                              f"{packed.shape[1]} bytes], element 2i in the low nibble")
        else:
            w = self.blob.add(f"{prefix}_weight", p.weight, "int8_t",
                              f"{comment}: INT8 weights [{p.weight.shape[0]}, "
                              f"{p.weight.shape[1]}]")
        m = self.add(f"{prefix}_multiplier", p.multiplier, "int32_t", f"{comment}: multipliers")
        s = self.add(f"{prefix}_shift", p.shift, "int32_t", f"{comment}: shifts")
        b = "NULL"
        if p.bias is not None:
            b = self.add(f"{prefix}_bias", p.bias, "int32_t", f"{comment}: bias, accumulator units")
        return (f"{{ .in_features = {p.weight.shape[1]}, .out_features = {p.weight.shape[0]}, "
                f".weight = {w}, .bias = {b}, .multiplier = {m}, .shift = {s} }}")


def add_initializer(p: QAdd) -> str:
    weights = list(p.weights) + [0] * (3 - len(p.weights))
    return (f"{{ .weights = {{ {', '.join(str(w) for w in weights)} }}, "
            f".multiplier = {p.multiplier}, .shift = {p.shift} }}")


# IR op -> C call. `v(name)` is the arena pointer of a block value.
def _transpose(node, graph, v):
    rows, cols = graph.values[node.inputs[0]].shape
    return f"rr_transpose_s8({v(node.inputs[0])}, {rows}, {cols}, {v(node.output)})"


def _linear(node, graph, v, bits):
    """Emit a direct kernel call, or linear_by_bits() when bits is None (blocks differ)."""
    rows = graph.values[node.inputs[0]].shape[0]
    args = f"{v(node.inputs[0])}, {rows}, {v(node.output)}"
    if bits is None:
        return f"linear_by_bits(&p->{node.name}, p->{bits_field(node)}, {args})"
    kernel = "rr_linear_s4" if bits == 4 else "rr_linear_s8"
    return f"{kernel}(&p->{node.name}, {args})"


def _glu(node, graph, v):
    rows = graph.values[node.inputs[0]].shape[0]
    return (f"rr_glu_s8(&p->{node.name}, {v(node.inputs[0])}, {rows}, "
            f"{node.attrs['intermediate']}, {v(node.output)})")


def _add_rmsnorm(node, graph, v):
    rows, n = graph.values[node.output].shape
    a, b = node.inputs
    return f"rr_add_rmsnorm_s8(&p->{node.name}, {v(a)}, {v(b)}, {rows}, {n}, {v(node.output)})"


def _attention(node, graph, v):
    rows = graph.values[node.inputs[0]].shape[0]
    return (f"rr_attention_s8(&p->{node.name}, {v(node.inputs[0])}, {rows}, {v(node.output)}, "
            f"{v(scratch_name(node))})")


EMITTERS = {
    "transpose": lambda node, graph, v, bits: _transpose(node, graph, v),
    "linear": _linear,
    "glu": lambda node, graph, v, bits: _glu(node, graph, v),
    "add_rmsnorm": lambda node, graph, v, bits: _add_rmsnorm(node, graph, v),
    "attention": lambda node, graph, v, bits: _attention(node, graph, v),
}

FIELD_TYPES = {"linear": "rr_linear_t", "glu": "rr_glu_t", "add_rmsnorm": "rr_add_rmsnorm_t",
               "attention": "rr_attention_t"}


def bits_field(node) -> str:
    """Return the rr_block_params_t field with a linear's weight bits, when blocks mix them."""
    return f"{node.name}_bits"


def node_bits(qm: QModel, runtime_dispatch: bool = False) -> dict[str, int | None]:
    """Map each linear node to its weight bits, or to None when they differ between blocks.

    With runtime_dispatch every linear node maps to None, so the C links both kernels and
    the dispatcher. budget.py links such a build to bound the code size of any mixture.
    """
    result = {}
    for node in qm.graph.nodes:
        if node.op == "linear":
            used = {params[node.name].bits for params in qm.blocks}
            result[node.name] = None if runtime_dispatch or len(used) > 1 else used.pop()
    return result


def render(qm: QModel, layout: ArenaLayout, name: str, provenance: list[str],
           runtime_dispatch: bool = False,
           kernel_variant: str = "portable") -> dict[str, str | bytes]:
    """Render every generated file; returns {file name: text}, and bytes for weights.bin.

    kernel_variant picks the linear kernels of kernels.c (boards.KERNEL_VARIANTS: the
    board file's `kernels`); the host build passes "portable".

    A linear whose weight bits differ between blocks calls linear_by_bits() with the bits
    stored in the block's parameters; runtime_dispatch (see node_bits) forces that for all.
    """
    if kernel_variant not in KERNEL_VARIANTS:
        raise ValueError(f"kernel variant {kernel_variant!r} is unknown; use one of "
                         f"{', '.join(KERNEL_VARIANTS)}")
    cfg, graph = qm.config, qm.graph
    bits_of_node = node_bits(qm, runtime_dispatch)
    dispatched = {name for name, bits in bits_of_node.items() if bits is None}
    kinds = sorted(set(linear_kinds(qm)) | ({"s4", "s8"} if dispatched else set()))
    # The name lands in a C string and comments, provenance lines in a comment: keep both inert.
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    banner_lines = [f"Generated by rrgen {__version__}. Do not edit; re-run the command below."]
    banner_lines += [line.replace("*/", "* /").replace("/*", "/ *") for line in provenance]
    banner = "/*\n" + "\n".join(f" * {line}" for line in banner_lines) + "\n */"

    # Arena pointers: every buffer is RR_BUF_<NAME>, its arena array plus its offset; the
    # block graph's input and output are the buffer `io`.
    def buffer_of(value: str) -> str:
        return "io" if value in (graph.input, graph.output) else value

    def v(value: str) -> str:
        return f"RR_BUF_{c_name(buffer_of(value)).upper()}"

    buffers = [{"macro": c_name(b.name).upper(), "symbol": layout.arena_of(b.name).symbol,
                "offset": layout.offset(b.name), "bytes": b.size_bytes,
                "arena": layout.arena_of(b.name).region or "arena"}
               for b in layout.buffers]
    steps, fields = [], []
    for node in graph.nodes:
        ins = ", ".join(f"{n}{list(graph.values[n].shape)}" for n in node.inputs)
        out = graph.values[node.output]
        where = layout.arena_of(buffer_of(node.output))
        offset = f"{where.symbol} + {layout.offset(buffer_of(node.output))}"
        per_layer = []
        for index in range(len(qm.blocks)):
            scale = qm.scales[f"layer{index}"][node.output]
            text = "/".join(f"{v:.4g}" for v in scale) if isinstance(scale, tuple) else f"{scale:.4g}"
            per_layer.append(f"L{index} {text}")
        comment = (f"{node.op} {node.name} ({node.source}): {ins} -> {out.name}{list(out.shape)} "
                   f"int8 at {offset}, output scale {', '.join(per_layer)}")
        steps.append({"comment": comment,
                      "call": EMITTERS[node.op](node, graph, v, bits_of_node.get(node.name))})
        if node.op in FIELD_TYPES:
            fields.append({"type": FIELD_TYPES[node.op], "name": node.name,
                           "comment": f"{node.source}"})
        if node.name in dispatched:
            fields.append({"type": "int32_t", "name": bits_field(node),
                           "comment": f"weight bits of {node.name}: 4 or 8"})

    table = WeightTable()
    rope_arrays = {}    # RoPE tables are the same in every block: one copy in flash
    layers = []
    for index, params in enumerate(qm.blocks):
        inits = []
        for node in graph.nodes:
            p = params.get(node.name)
            prefix = f"k_l{index}_{c_name(node.name)}"
            if isinstance(p, QLinear):
                scale = qm.scales[f"layer{index}"]
                comment = (f"layer {index} {node.attrs['weight']} (input scale "
                           f"{float(scale[node.inputs[0]]):.9g})")
                inits.append({"field": node.name, "value": table.linear(prefix, p, comment)})
                if node.name in dispatched:
                    inits.append({"field": bits_field(node), "value": str(p.bits)})
            elif isinstance(p, QGlu):
                t = table.add(f"{prefix}_silu", p.table, "int8_t",
                              f"layer {index} {node.name}: SiLU table, index gate + 128")
                inits.append({"field": node.name, "value":
                              f"{{ .table = {t}, .multiplier = {p.multiplier}, .shift = {p.shift} }}"})
            elif isinstance(p, QAttention):
                key = (p.cos.tobytes(), p.sin.tobytes())
                if key not in rope_arrays:
                    n = len(rope_arrays)
                    rope_arrays[key] = (
                        table.blob.add(f"k_rope{n}_cos", p.cos, "int16_t",
                                       f"RoPE cos [positions, {p.head_dim // 2}], Q14"),
                        table.blob.add(f"k_rope{n}_sin", p.sin, "int16_t",
                                       f"RoPE sin [positions, {p.head_dim // 2}], Q14"))
                cos, sin = rope_arrays[key]
                inits.append({"field": node.name, "value":
                              f"{{ .heads = {p.heads}, .head_dim = {p.head_dim}, .cos = {cos}, "
                              f".sin = {sin}, .score_multiplier = {p.score_multiplier}, "
                              f".score_shift = {p.score_shift}, .multiplier = {p.multiplier}, "
                              f".shift = {p.shift} }}"})
            elif isinstance(p, QAddNorm):
                inits.append({"field": node.name, "value":
                              f"{{ .weight_a = {p.weight_a}, .weight_b = {p.weight_b}, "
                              f".eps_term = {p.eps_term}, .multiplier = {p.multiplier}, "
                              f".total_shift = {p.total_shift} }}"})
        layers.append(inits)

    lm_head = table.linear("k_lm_head", qm.lm_head, "lm_head")
    q_head = table.linear("k_q_head", qm.q_head, "q_head")
    table.blob.add("rr_embed", qm.embed, "int8_t",
                   f"token embedding x sqrt(hidden), scale {qm.scales['x']:.9g}",
                   "[RR_VOCAB_SIZE][RR_HIDDEN]")
    table.blob.add("rr_puzzle_emb", qm.puzzle, "int8_t",
                   f"puzzle embedding x sqrt(hidden), scale {qm.scales['x']:.9g}",
                   "[RR_NUM_PUZZLE_IDENTIFIERS][RR_HIDDEN]")
    table.arrays.append(CArray("rr_h_init", "int8_t", "[RR_HIDDEN]", format_ints(qm.h_init),
                               qm.h_init.size, f"H_init, carry scale {qm.scales['carry']:.9g}"))
    table.arrays.append(CArray("rr_l_init", "int8_t", "[RR_HIDDEN]", format_ints(qm.l_init),
                               qm.l_init.size, f"L_init, carry scale {qm.scales['carry']:.9g}"))

    weights_bin = table.blob.data()
    net_l, net_h = net_layers(cfg)
    env = environment()
    context = {
        "blocks": len(qm.blocks), "h_first": net_h[0], "h_layers": len(net_h),
        "has_attention": any(n.op == "attention" for n in graph.nodes),
        "exp_hi": EXP_HI, "exp_lo": EXP_LO, "exp_max": EXP_MAX,
        "exp_hi_body": format_ints(EXP_HI, 16), "exp_lo_body": format_ints(EXP_LO, 16),
        "banner": banner, "name": name, "cfg": cfg, "bits": qm.bits, "layout": layout,
        "buffers": buffers, "arenas": layout.arenas, "block_fields": fields, "block_steps": steps,
        "arrays": table.arrays, "layers": layers, "model_id": qm.model_id(),
        "blob_arrays": table.blob.arrays, "blob_file": blob.FILE_NAME,
        "blob_bytes": len(weights_bin), "section": blob.SECTION,
        "external_section": blob.EXTERNAL_SECTION,
        "add_z": add_initializer(qm.add_z), "add_y": add_initializer(qm.add_y),
        "lm_head": lm_head, "q_head": q_head,
        "linear_kinds": kinds, "linear_by_bits": bool(dispatched),
        "max_features": max([n.attrs["out_features"] for n in graph.nodes if n.op == "linear"]
                            + [cfg.vocab_size, 2]),
        "kernel_variant": kernel_variant,
        "max_in_features": max([n.attrs["in_features"] for n in graph.nodes if n.op == "linear"]
                               + [2]),
    }
    files: dict[str, str | bytes] = {out: env.get_template(tpl).render(**context)
                                     for out, tpl in TEMPLATES.items()}
    files[blob.FILE_NAME] = weights_bin
    return files


def linear_kinds(qm: QModel) -> list[str]:
    """List the kernels of the block linears ("s4", "s8"), sorted. kernels.c.j2 emits only these."""
    return sorted({f"s{params[node.name].bits}" for params in qm.blocks
                   for node in qm.graph.nodes if node.op == "linear"})


def write(files: dict[str, str | bytes], out_dir: Path) -> list[Path]:
    """Write render's files into out_dir: text as UTF-8, bytes as they are."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in sorted(files.items()):
        path = out_dir / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths.append(path)
    return paths


FLASH_READ_SOURCE = FIRMWARE_DIR / "src" / "flash_read.c"


def compiled_sources(src: Path) -> list[Path]:
    """List the files that the compiler builds for the model: the generated files in src
    (write's output folder) and firmware/src/flash_read.c, the weak rr_flash_read default."""
    return [src / "model.c", src / "weights.c", src / "weights.S", src / "kernels.c",
            FLASH_READ_SOURCE]
