"""One diagram per method, drawn with matplotlib (no image files): show it where the method is
introduced, before its equations.

    lora_diagram()            frozen W beside the trainable A then B, scaled by s = alpha / r
    mtlora_diagram(tasks)     the last block of a stage: shared attention, the shared and per-task
                              streams through proj / fc1 / fc2 with TS-LoRA, task features out
    hydralora_diagram()       a shared A, n routed B heads (HydraLoRA), all starting at zero
    rlora_diagram()           random heads, one dropout mask per head, the offset (R-LoRA)

Each returns a ``matplotlib.figure.Figure`` (a notebook shows it; ``save_figure`` writes it).
Every box is a ``FancyBboxPatch`` whose ``gid`` is its label's first line, so tests (and you)
can find them: ``boxes(fig)`` lists them. Colours: grey = frozen, orange = trainable, blue = data.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

FROZEN, TRAINED, DATA, SHARED, NOTE = "#d9d9d9", "#fdae6b", "#c6dbef", "#fdd0a2", "#f7f7f7"
FONT = 8


def _canvas(
    width: float, height: float, xmax: float, ymax: float, title: str
) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=FONT + 2)
    return fig, ax


def _box(
    ax: Axes, x: float, y: float, w: float, h: float, label: str, color: str, size: int = FONT
) -> tuple[float, float, float, float]:
    """A rounded box with its lower-left corner at (x, y) and a centred label; returns (x, y, w,
    h). The box's gid is the label's first line."""
    patch = FancyBboxPatch(
        (x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=color, ec="#404040", lw=0.9
    )
    patch.set_gid(label.split("\n")[0])
    ax.add_patch(patch)
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=size, linespacing=1.25)
    return x, y, w, h


def _arrow(
    ax: Axes, start: tuple[float, float], end: tuple[float, float], style: str = "-"
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start, end, arrowstyle="-|>", mutation_scale=9, lw=0.9, color="#404040", linestyle=style
        )
    )


def _plus(ax: Axes, x: float, y: float, sign: str = "+") -> None:
    ax.add_patch(Circle((x, y), 0.22, fc="white", ec="#404040", lw=0.9))
    ax.text(x, y, sign, ha="center", va="center", fontsize=FONT + 2)


def boxes(fig: Figure) -> list[str]:
    """The labelled boxes of a diagram (their gids), in drawing order."""
    return [p.get_gid() for ax in fig.axes for p in ax.patches if isinstance(p, FancyBboxPatch)]


# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------


def lora_diagram() -> Figure:
    """LoRA on one linear layer: h = W x + s B A x, W frozen, A (r x d_in) random, B (d_out x r)
    zero, s = alpha / r (after LoRA's Figure 1)."""
    fig, ax = _canvas(
        6.4, 4.4, 10.0, 7.0, "LoRA: a trainable low-rank update beside a frozen layer"
    )
    _box(ax, 3.6, 0.2, 2.8, 0.8, "x\ninput (d_in)", DATA)
    _box(ax, 0.3, 2.2, 3.6, 2.0, "W\npretrained weight\n(d_out × d_in)\nfrozen", FROZEN)
    _box(ax, 6.0, 1.7, 3.3, 1.2, "A\n(r × d_in)\nkaiming-uniform init", TRAINED)
    _box(ax, 6.0, 3.5, 3.3, 1.2, "B\n(d_out × r)\nzero init", TRAINED)
    _box(ax, 3.3, 6.0, 3.4, 0.8, "h = W x + s B A x\n(d_out)", DATA)
    _plus(ax, 5.0, 5.3)
    _arrow(ax, (4.4, 1.0), (2.6, 2.2))
    _arrow(ax, (5.6, 1.0), (7.0, 1.7))
    _arrow(ax, (7.65, 2.9), (7.65, 3.5))
    ax.text(7.85, 3.2, "r numbers per token", fontsize=FONT - 1, va="center")
    _arrow(ax, (2.1, 4.2), (4.8, 5.2))
    _arrow(ax, (7.0, 4.7), (5.2, 5.2))
    ax.text(6.4, 5.25, "× s = α / r", fontsize=FONT, ha="left", va="bottom")
    _arrow(ax, (5.0, 5.52), (5.0, 6.0))
    ax.text(0.3, 5.8, "grey: frozen\norange: trained", fontsize=FONT - 1, va="center")
    return fig


# ------------------------------------------------------------------------------------------------
# MTLoRA
# ------------------------------------------------------------------------------------------------


def mtlora_diagram(tasks: Sequence[str] = ("semseg", "parts", "saliency", "normals")) -> Figure:
    """The last block of a Swin stage under MTLoRA: attention once on the shared stream (qkv with
    TA-LoRA), then the shared stream and one stream per task through proj and the MLP (fc1, fc2)
    with TA-LoRA on the shared stream and TS-LoRA on each task's; task features go to the task
    decoders, the shared stream to the next stage (after MTLoRA's Figure 2). Residual
    connections and LayerNorms are not drawn."""
    rows = ["shared", *tasks]
    row_h, gap = 0.9, 0.35
    top = 0.1 + len(rows) * (row_h + gap)
    ymax = top + 0.7
    fig, ax = _canvas(9.0, 0.6 * ymax + 0.4, 15.0, ymax, "MTLoRA: the last block of a stage")
    ys = [top - row_h - k * (row_h + gap) for k in range(len(rows))]
    heads = {1.2: "input", 4.1: "attention, once", 7.2: "proj", 10.1: "MLP: fc1, GELU, fc2"}
    heads[13.4] = "output"
    for x, text in heads.items():
        ax.text(x, top + 0.25, text, ha="center", fontsize=FONT, style="italic")
    y0 = ys[0]
    _box(ax, 0.1, y0, 2.2, row_h, "x\nshared stream in", DATA)
    _box(ax, 2.8, y0, 2.6, row_h, "attention\nqkv: TA-LoRA", SHARED)
    _arrow(ax, (2.3, y0 + row_h / 2), (2.8, y0 + row_h / 2))
    for k, (name, y) in enumerate(zip(rows, ys, strict=True)):
        shared = k == 0
        color, kind = (SHARED, "TA-LoRA") if shared else (TRAINED, "TS-LoRA")
        mid = y + row_h / 2
        suffix = "" if shared else f" ({name})"
        _box(ax, 6.2, y, 2.0, row_h, f"proj{suffix}\n{kind}", color)
        _box(ax, 8.8, y, 2.6, row_h, f"fc1, fc2{suffix}\n{kind}", color)
        out = "shared stream\nto the next stage" if shared else f"{name} features\nto its decoder"
        _box(ax, 12.0, y, 2.8, row_h, out, DATA if shared else NOTE)
        _arrow(ax, (5.4, y0 + row_h / 2), (6.2, mid))
        _arrow(ax, (8.2, mid), (8.8, mid))
        _arrow(ax, (11.4, mid), (12.0, mid))
    ax.text(
        0.1,
        ys[-1],
        "A TS layer (proj, fc1, fc2)\nkeeps one frozen W for all\nstreams, applied to the\n"
        "shared stream x; each task's\nbranch reads its own x_t:\ny_t = W x + b + s B_t A_t x_t",
        fontsize=FONT - 1,
        va="bottom",
    )
    return fig


# ------------------------------------------------------------------------------------------------
# HydraLoRA and R-LoRA
# ------------------------------------------------------------------------------------------------

SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _path(ax: Axes, points: Sequence[tuple[float, float]]) -> None:
    """A polyline through ``points`` with an arrow head on its last segment."""
    xs, ys = zip(*points[:-1], strict=True)
    ax.plot(xs, ys, color="#404040", lw=0.9)
    _arrow(ax, points[-2], points[-1])


def _multihead(n_heads: int, rlora: bool) -> Figure:
    title = (
        "R-LoRA: random heads, a dropout mask per head, an offset"
        if rlora
        else "HydraLoRA: a shared A and routed B heads"
    )
    head_h, gap = 0.8, 0.3
    span = n_heads * (head_h + gap)
    mid = 1.8 + span / 2
    ymax = span + 3.2
    fig, ax = _canvas(9.0, 0.56 * ymax + 0.4, 16.0, ymax, title)
    plus_x, sum_x = 15.0, 11.1
    _box(ax, 0.1, mid - 0.45, 1.6, 0.9, "x\ninput", DATA)
    w_label = "W - s B₀A₀\nfrozen; B₀A₀ saved with the adapter" if rlora else "W\nfrozen"
    _box(ax, 2.3, ymax - 1.2, 4.4, 0.95, w_label, FROZEN)
    _box(ax, 2.3, mid - 0.6, 2.6, 1.2, "A\nshared (r × d_in)", TRAINED)
    _box(ax, 2.3, 0.2, 3.4, 1.0, "router\nw(x) = softmax(W_r x)", TRAINED)
    _arrow(ax, (1.7, mid), (2.3, mid))
    _arrow(ax, (1.2, mid + 0.45), (2.6, ymax - 1.2))
    _arrow(ax, (1.2, mid - 0.45), (2.6, 1.2))
    heads_x = 7.6
    first = mid + (n_heads - 1) * (head_h + gap) / 2
    for i in range(n_heads):
        y, k = first - i * (head_h + gap), str(i + 1).translate(SUB)
        if rlora:
            _box(ax, 5.6, y - head_h / 2, 1.4, head_h, f"mask m{k}\non A x", NOTE)
            _arrow(ax, (4.9, mid), (5.6, y))
            _arrow(ax, (7.0, y), (heads_x, y))
            label = f"B{k}\nrandom: c N(0, 1/d_out)"
        else:
            _arrow(ax, (4.9, mid), (heads_x, y))
            label = f"B{k}\nzero init"
        _box(ax, heads_x, y - head_h / 2, 2.9, head_h, label, TRAINED)
        _arrow(ax, (heads_x + 2.9, y), (sum_x, mid))
    mix = "Σᵢ wᵢ Bᵢ (mᵢ ⊙ A x)\n× 1 / (1 - p), × s" if rlora else "Σᵢ wᵢ Bᵢ A x\n× s"
    _box(ax, sum_x, mid - 0.65, 3.0, 1.3, f"weighted sum\n{mix}", NOTE)
    _path(ax, [(5.7, 0.7), (sum_x + 1.5, 0.7), (sum_x + 1.5, mid - 0.65)])
    ax.text(9.0, 0.8, "w₁ ... wₙ per token", fontsize=FONT - 1, ha="center", va="bottom")
    _plus(ax, plus_x, mid)
    _arrow(ax, (sum_x + 3.0, mid), (plus_x - 0.22, mid))
    _path(ax, [(6.7, ymax - 0.7), (plus_x, ymax - 0.7), (plus_x, mid + 0.22)])
    ax.text(plus_x, mid - 0.35, "y", ha="center", va="top", fontsize=FONT + 1)
    return fig


def hydralora_diagram(n_heads: int = 3) -> Figure:
    """Multi-head LoRA as in HydraLoRA: y = W x + b + s sum_i w_i(x) B_i A x with one shared A,
    n heads B_i starting at zero, and a per-token softmax router reading x."""
    return _multihead(n_heads, rlora=False)


def rlora_diagram(n_heads: int = 3) -> Figure:
    """R-LoRA: the multi-head layer with random heads (B_i ~ c N(0, 1/d_out)), an independent
    dropout mask per head on A x, and the offset s B0 A0 subtracted from W so that the model
    starts at the pretrained function."""
    return _multihead(n_heads, rlora=True)
