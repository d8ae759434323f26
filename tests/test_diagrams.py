"""The method diagrams: each renders, has its labelled boxes, and no two labels overlap."""

from __future__ import annotations

import io
import itertools

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from mtlora_lite.course import diagrams

EXPECTED = {
    "lora": (diagrams.lora_diagram, {"x", "W", "A", "B", "h = W x + s B A x"}),
    "mtlora": (
        lambda: diagrams.mtlora_diagram(("semseg", "normals")),
        {
            "attention",
            "proj",
            "fc1, fc2",
            "proj (semseg)",
            "fc1, fc2 (normals)",
            "shared stream",
            "semseg features",
            "normals features",
        },
    ),
    "hydralora": (diagrams.hydralora_diagram, {"x", "W", "A", "router", "B₁", "B₂", "B₃"}),
    "rlora": (
        lambda: diagrams.rlora_diagram(4),
        {"A", "router", "mask m₁", "mask m₄", "B₁", "B₄", "W - s B₀A₀", "weighted sum"},
    ),
}


def _extents(fig: Figure):
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    texts = [t for t in fig.axes[0].texts if t.get_text().strip()]
    return renderer, texts


@pytest.mark.parametrize("name", EXPECTED)
def test_diagram_renders_with_its_boxes(name: str) -> None:
    make, wanted = EXPECTED[name]
    fig = make()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
    assert wanted <= set(diagrams.boxes(fig)), diagrams.boxes(fig)


@pytest.mark.parametrize("name", EXPECTED)
def test_no_label_overlaps_another_and_each_fits_its_box(name: str) -> None:
    fig = EXPECTED[name][0]()
    renderer, texts = _extents(fig)
    boxes = {t.get_window_extent(renderer) for t in texts}
    for a, b in itertools.combinations(texts, 2):
        ea, eb = a.get_window_extent(renderer), b.get_window_extent(renderer)
        assert not ea.overlaps(eb), f"{a.get_text()!r} overlaps {b.get_text()!r}"
    assert len(boxes) == len(texts)
    patches = [p for p in fig.axes[0].patches if isinstance(p, FancyBboxPatch)]
    for patch in patches:
        outer = patch.get_window_extent(renderer)
        label = next(
            t
            for t in texts
            if t.get_text().split("\n")[0] == patch.get_gid()
            and outer.contains(*fig.axes[0].transData.transform(t.get_position()))
        )
        inner = label.get_window_extent(renderer)
        assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1, f"{patch.get_gid()!r} too wide"
        assert outer.y0 <= inner.y0 and inner.y1 <= outer.y1, f"{patch.get_gid()!r} too tall"
    figure_box = fig.bbox
    for t in texts:
        e = t.get_window_extent(renderer)
        assert figure_box.x0 <= e.x0 and e.x1 <= figure_box.x1, f"{t.get_text()!r} is cut off"
