"""The exercises: every reference solution passes its check, a typical wrong answer fails with
its own hint, an untouched stub is "not answered" (never an exception), and the framework's
SOLUTIONS switch, fallbacks, hints and solutions work. The references are checked against the
package where it computes the same thing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlora_lite.course.exercises import (
    NOTEBOOKS,
    load_exercises,
    nb00,
    nb01,
    nb02,
    nb03,
    nb04,
    nb05,
    nb06,
    nb07,
)

ALL = [(nb, e.number) for nb in NOTEBOOKS for e in load_exercises(nb)]


def _stub(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError  # your code here


def _exercise(nb: str, k: int):
    return getattr(load_exercises(nb), f"q{k}")


@pytest.mark.parametrize(("nb", "k"), ALL, ids=[f"{nb}-q{k}" for nb, k in ALL])
def test_reference_solution_passes(nb: str, k: int) -> None:
    ex = _exercise(nb, k)
    feedback = ex.evaluate(ex.solution_obj)
    assert feedback.correct, feedback.message


@pytest.mark.parametrize(("nb", "k"), ALL, ids=[f"{nb}-q{k}" for nb, k in ALL])
def test_untouched_stub_is_not_answered(nb: str, k: int) -> None:
    """The stub as a notebook holds it (``Exercise.stub``), run as a cell, is "not answered"."""
    ex = _exercise(nb, k)
    namespace: dict[str, Any] = {}
    exec("import torch\nfrom torch import nn\n" + ex.stub, namespace)
    for answer in (namespace[ex.title], ..., None):
        feedback = ex.evaluate(answer)
        assert feedback.status == "unanswered", feedback
        assert "not answered" in feedback.message
    assert ex.check_cell.startswith(f"{ex.title} = ex.q{k}.check({ex.title})")


def test_stubs_are_formatted_as_ruff_keeps_them() -> None:
    """A notebook's stub cell must equal ``Exercise.stub`` after ``ruff format``."""
    for nb, k in ALL:
        stub = _exercise(nb, k).stub
        formatted = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--line-length", "100", "-"],
            input=stub,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert formatted.rstrip("\n") == stub, (nb, k)


def test_every_notebook_has_three_to_five_exercises() -> None:
    for nb in NOTEBOOKS:
        assert 3 <= len(load_exercises(nb)) <= 5, nb


# -------------------------------------------------------------------------------------------------
# typical wrong answers, one or more per exercise, with the words their message must contain
# -------------------------------------------------------------------------------------------------


class _NoScale(nb01.LinearWithLoRA):
    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T


class _RandomB(nb01.LinearWithLoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        nn.init.normal_(self.lora_B)


class _Transposed(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.zeros(base.in_features, rank))
        self.lora_B = nn.Parameter(torch.zeros(rank, base.out_features))
        self.scaling = alpha / rank


class _RandnA(nb01.LinearWithLoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        nn.init.normal_(self.lora_A)


class _NotFrozen(nb01.LinearWithLoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        base.requires_grad_(True)


class _ScaleFlipped(nb01.LinearWithLoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(base, rank, alpha)
        self.scaling = rank / alpha


class _MatrixOnly(nb01.LinearWithLoRA):
    def forward(self, x):
        return self.base(x) + self.scaling * torch.mm(torch.mm(x, self.lora_A.T), self.lora_B.T)


class _NewBase(nb01.LinearWithLoRA):
    def __init__(self, base, rank, alpha):
        super().__init__(nn.Linear(base.in_features, base.out_features), rank, alpha)


def _train_without_zero_grad(model, loader, loss_fn, steps, lr):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    while len(losses) < steps:
        for x, y in loader:
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


def _train_one_pass(model, loader, loss_fn, steps, lr):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for x, y in loader:
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _train_tensors(model, loader, loss_fn, steps, lr):
    return [torch.tensor(v) for v in nb01.train(model, loader, loss_fn, steps, lr)]


def _train_sgd(model, loader, loss_fn, steps, lr):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses, batches = [], list(loader)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _mean_iou_all_classes(pred, target, n):
    ious = []
    for c in range(n):
        p, t = pred == c, target == c
        union = (p | t).sum()
        ious.append((p & t).sum() / union if union else torch.tensor(0.0))
    return 100 * torch.stack(ious).mean().item()


def _ts_with_W_on_task(x, x_tasks, W, b, A_s, B_s, A_t, B_t, s):
    shared = x @ W.T + b + s * (x @ A_s.T) @ B_s.T
    tasks = x_tasks @ W.T + b + s * (x_tasks @ A_t.transpose(1, 2)) @ B_t.transpose(1, 2)
    return shared, tasks


def _ts_with_shared(x, x_tasks, W, b, A_s, B_s, A_t, B_t, s):
    shared, tasks = nb03.ts_forward(x, x_tasks, W, b, A_s, B_s, A_t, B_t, s)
    return shared, tasks + s * (x @ A_s.T) @ B_s.T


def _rotate_pixels_only(normals, k):
    return torch.rot90(normals, k, dims=(1, 2))


def _turn_clockwise(normals, degrees):
    return nb07.turn_vectors(normals, -degrees)


WRONG: list[tuple[str, int, Callable | Any, str]] = [
    ("00", 1, lambda p, t, n: 100 * (p == t).float().mean().item(), "pixel accuracy"),
    ("00", 1, _mean_iou_all_classes, "absent from both"),
    ("00", 1, lambda p, t, n: nb00.mean_iou(p, t, n) / 100, "percent"),
    ("00", 2, lambda m, s, h: nb00.delta_m_by_hand(m, s, dict.fromkeys(h, True)), "sign flip"),
    ("00", 2, lambda m, s, h: nb00.delta_m_by_hand(m, s, h) / 100, "percent"),
    ("00", 3, [(32, 64, 64), (64, 32, 32), (128, 16, 16), (256, 8, 8)], "4 x 4 patches"),
    ("00", 3, [(32, 16, 16), (32, 8, 8), (32, 4, 4), (32, 2, 2)], "doubles"),
    ("00", 3, [(16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 256)], "channels first"),
    ("01", 1, _NoScale, "not scaled"),
    ("01", 1, _RandomB, "lora_B must start at zero"),
    ("01", 1, _Transposed, "transposed"),
    ("01", 1, _RandnA, "kaiming_uniform_"),
    ("01", 1, _NotFrozen, "freeze the base layer"),
    ("01", 1, _ScaleFlipped, "r / alpha"),
    ("01", 1, _MatrixOnly, "any leading dims"),
    ("01", 1, _NewBase, "base weights changed"),
    ("01", 2, _train_without_zero_grad, "zero_grad() once per step"),
    ("01", 2, _train_one_pass, "loop over it again"),
    ("01", 2, _train_tensors, "loss.item()"),
    ("01", 2, _train_sgd, "AdamW"),
    ("01", 3, lambda i, o, r: r * i * o, "r (d_in + d_out)"),
    ("01", 3, lambda i, o, r: i + o, "multiply by the rank"),
    ("01", 4, lambda W, A, B, s: W + B @ A, "not scaled"),
    ("01", 4, lambda W, A, B, s: W.T + s * A.T @ B.T, "transposed"),
    ("01", 4, lambda W, A, B, s: W.add_(s * B @ A), "in place"),
    ("02", 1, lambda p, t, ts, w: sum(ts[k].loss(p[k], t[k]) for k in ts), "weights are missing"),
    ("02", 1, lambda p, t, ts, w: nb02.multitask_loss(p, t, ts, w) / len(ts), "weighted sum"),
    ("02", 2, lambda g: torch.stack(list(g.values())) @ torch.stack(list(g.values())).T, "norms"),
    ("02", 3, lambda g, t, lr: -nb02.first_order_change(g, t, lr), "sign"),
    ("02", 3, lambda g, t, lr: nb02.first_order_change(g, t, lr) / lr, "learning rate"),
    ("02", 4, lambda gi, gj: gi - (gi @ gj) / (gj @ gj) * gj, "do not conflict"),
    ("02", 4, lambda gi, gj: gi - (gi @ gj) / gj.norm() * gj if gi @ gj < 0 else gi, "|g_j|^2"),
    ("03", 1, _ts_with_W_on_task, "W acts on the shared"),
    ("03", 1, _ts_with_shared, "'with_shared'"),
    ("03", 1, lambda *a: nb03.ts_forward(*a)[1], "return two things"),
    ("03", 2, lambda w, r, n: nb03.ts_parameters(w, r, n) // n, "number of tasks"),
    (
        "03",
        2,
        lambda w, r, n: nb03.ts_parameters(w, r, n) + n * r * sum(4 * c for c, _ in w),
        "qkv has no task branch",
    ),
    ("03", 3, lambda pts: [max(pts, key=lambda k: pts[k][1])], "is missing"),
    ("03", 3, lambda pts: sorted(pts, key=lambda k: pts[k][0]), "dominated"),
    ("03", 3, lambda pts: nb03.pareto_front(pts)[::-1], "wrong order"),
    (
        "03",
        4,
        lambda x, xt, Wm, b, As, Bs, At, Bt, s: x @ Wm.T + b + s * (xt @ At.T) @ Bt.T,
        "subtract",
    ),
    ("04", 1, lambda x, W, b, A, B, Wr, s: nb04.multihead_forward(x, W, b, A, B, Wr, 1.0), "s"),
    (
        "04",
        1,
        lambda x, W, b, A, B, Wr, s: nb04.multihead_forward(x, W, b, A, B, torch.zeros_like(Wr), s),
        "router's w_i",
    ),
    ("04", 2, "zero", "dL/dA that is zero"),
    ("04", 2, "different", "tell the heads apart"),
    (
        "04",
        3,
        lambda x, g, A, w, s: nb04.head_gradients(x, g, A, torch.ones_like(w), s),
        "routing weight",
    ),
    (
        "04",
        3,
        lambda x, g, A, w, s: nb04.head_gradients(x, g, A, w, s).transpose(1, 2),
        "(n, r, out)",
    ),
    ("04", 3, lambda x, g, A, w, s: nb04.head_gradients(x, g, A, w, 1.0), "scale s"),
    (
        "04",
        4,
        lambda B: (
            (
                F.normalize(B.permute(1, 0, 2).flatten(1), dim=1)
                @ F.normalize(B.permute(1, 0, 2).flatten(1), dim=1).T
            )
            .mean()
            .item()
        ),
        "diagonal",
    ),
    ("04", 5, lambda w: -(w * w.log2()).sum(-1).mean().item(), "nats"),
    ("04", 5, lambda w: -(w.mean(0) * w.mean(0).log()).sum().item(), "each token's entropy"),
    ("05", 1, lambda d, g: math.sqrt(d) / math.sqrt(g), "fourth root"),
    ("05", 1, lambda d, g: d**0.25 / g, "sqrt(gamma)"),
    ("05", 2, lambda W, A, B, s: W - s * B.sum(1) @ A, "mean_i(B_i)"),
    ("05", 2, lambda W, A, B, s: W + s * B.mean(1) @ A, "subtract"),
    ("05", 3, lambda u, w, m, B, s, p: nb05.multihead_dropout(u, w, m, B, s, 0.0), "1 / (1 - p)"),
    (
        "05",
        3,
        lambda u, w, m, B, s, p: nb05.multihead_dropout(u, w, m[:, :1].expand_as(m), B, s, p),
        "its own mask",
    ),
    (
        "05",
        4,
        lambda a, b: "better" if sum(a.values()) > sum(b.values()) else "worse",
        "every seed",
    ),
    ("06", 1, lambda y: 100 * (y == 0).float().mean().item(), "most frequent class"),
    ("06", 1, lambda y: 100 / (int(y.max()) + 1), "uniform guessing"),
    ("06", 2, lambda s, r, h: sum(r * (i + o) for i, o in s), "head is missing"),
    ("06", 2, lambda s, r, h: nb06.adapter_numbers(s, r, h) - h[1], "bias"),
    ("06", 3, lambda layer: layer.merge() or layer.base_layer, "was changed"),
    ("06", 4, lambda r, a, t, m: nb06.peft_config(r, a / r, t, m), "scale lora_alpha / r"),
    ("06", 4, lambda r, a, t, m: nb06.peft_config(r, a, t, []), "modules_to_save"),
    ("07", 1, _turn_clockwise, "clockwise"),
    ("07", 1, lambda n, d: nb07.turn_vectors(n, math.degrees(d)), "math.radians"),
    ("07", 2, _rotate_pixels_only, "turn each vector"),
    ("07", 2, lambda n, k: nb07.turn_vectors(n, 90.0 * k), "pixels did not move"),
    ("07", 3, lambda n: n.flip(-1), "negate n_x"),
    ("07", 3, lambda n: torch.stack([-n[0], n[1], n[2]]).flip(-2), "up-down"),
    ("07", 4, lambda b, d: 5e-4 * b / 512, "number of devices"),
]


@pytest.mark.parametrize(
    ("nb", "k", "answer", "words"),
    WRONG,
    ids=[f"{nb}-q{k}-{i}" for i, (nb, k, _, _) in enumerate(WRONG)],
)
def test_typical_mistake_gets_its_hint(nb: str, k: int, answer: Any, words: str) -> None:
    feedback = _exercise(nb, k).evaluate(answer)
    assert feedback.status == "wrong", feedback
    assert words in feedback.message, feedback.message


def test_every_exercise_has_a_tested_mistake() -> None:
    assert {(nb, k) for nb, k, _, _ in WRONG} == set(ALL)


def test_a_crash_in_the_learners_code_is_reported_not_raised() -> None:
    def broken(W, A, B, s):
        return W + s * A @ B  # (r, in) @ (out, r): the shapes do not chain

    feedback = _exercise("01", 4).evaluate(broken)
    assert feedback.status == "error"
    assert "RuntimeError" in feedback.message


def test_compare_names_the_element_that_differs() -> None:
    def almost(W, A, B, s):
        out = nb01.merged_weight(W, A, B, s).clone()
        out[2, 3] += 0.5
        return out

    feedback = _exercise("01", 4).evaluate(almost)
    assert feedback.status == "wrong"
    assert "[2, 3]" in feedback.message and "expected" in feedback.message


# -------------------------------------------------------------------------------------------------
# the framework: check, SOLUTIONS, fallback, hints, solutions, random state, report
# -------------------------------------------------------------------------------------------------


def test_check_returns_the_answer_when_right_and_the_reference_otherwise(capsys) -> None:
    ex = load_exercises("01")
    mine = nb01.merged_weight  # a correct answer of the learner's
    assert ex.q4.check(mine) is mine
    assert ex.q4.check(_stub) is nb01.merged_weight
    out = capsys.readouterr().out
    assert "✓ Exercise 4" in out and "not answered yet" in out
    assert "reference solution" in out and "ex.q4.hint()" in out
    wrong = ex.q4.check(lambda W, A, B, s: W + B @ A)
    assert wrong is nb01.merged_weight
    assert "not scaled" in capsys.readouterr().out


def test_solutions_mode_checks_and_returns_the_reference(capsys) -> None:
    ex = load_exercises("05", solutions=True)
    assert ex.q2.check(_stub) is nb05.offset_weight
    assert "SOLUTIONS = True" in capsys.readouterr().out
    assert ex.summary()["correct"] == 1
    assert "reference solutions" in ex.report()


def test_solutions_mode_fails_loudly_when_a_reference_is_wrong(monkeypatch) -> None:
    ex = load_exercises("05", solutions=True)
    monkeypatch.setattr(ex.q1, "solution_obj", lambda d, g: d**0.5 / g**0.5)
    with pytest.raises(AssertionError, match="reference solution fails its own check"):
        ex.q1.check(_stub)


def test_hints_and_solution_are_printed(capsys) -> None:
    ex = load_exercises("03")
    ex.q1.hint()
    ex.q1.hint(2)
    ex.q1.solution()
    out = capsys.readouterr().out
    assert "Hint 1 of 2" in out and "Hint 2 of 2" in out
    assert "def ts_forward(" in out and "return shared, tasks" in out
    with pytest.raises(ValueError, match="hints 1 to 2"):
        ex.q1.hint(3)
    with pytest.raises(AttributeError, match="q1 to q4"):
        _ = ex.q9


def test_a_check_leaves_the_notebooks_random_state_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_exercises("01").q1.evaluate(nb01.LinearWithLoRA)
    assert torch.equal(torch.rand(3), expected)


def test_report_counts_what_was_checked() -> None:
    ex = load_exercises("00")
    ex.q1.check(nb00.mean_iou)
    ex.q2.check(_stub)
    assert ex.summary() == {"correct": 1, "wrong": 0, "unanswered": 1, "unchecked": 1}
    assert ex.report() == "Exercises: 1 of 3 correct, 1 not answered, 1 not checked."


def test_unknown_notebook_is_refused() -> None:
    with pytest.raises(ValueError, match="no exercises"):
        load_exercises("09")
    assert len(load_exercises("06_use_it_on_your_model")) == 4


# -------------------------------------------------------------------------------------------------
# the references compute what the package computes
# -------------------------------------------------------------------------------------------------


def test_mean_iou_and_delta_m_match_the_package() -> None:
    from mtlora_lite import delta_m
    from mtlora_lite.multitask.tasks import ConfusionMetric

    pred, target, n = nb00._iou_cases()[0]
    metric = ConfusionMetric(n)
    metric.update(F.one_hot(pred, n).movedim(-1, 1).float(), target)
    assert math.isclose(nb00.mean_iou(pred, target, n), metric.compute()["mIoU"], rel_tol=1e-5)
    multi, single, higher = nb00.DELTA_CASE
    assert math.isclose(nb00.delta_m_by_hand(multi, single, higher), delta_m(multi, single, higher))


def test_stage_shapes_are_the_course_swins() -> None:
    from mtlora_lite.course.backbones import build_course_swin
    from mtlora_lite.multitask.backbones import stage_features

    with torch.no_grad():
        maps = stage_features(build_course_swin(), torch.zeros(1, 3, 64, 64))
    assert [tuple(m.shape[1:]) for m in maps] == nb00.STAGE_SHAPES


def test_linear_with_lora_matches_lora_linear() -> None:
    from mtlora_lite import LoRALinear

    base = nn.Linear(8, 6)
    mine, ours = nb01.LinearWithLoRA(base, 2, 4.0), LoRALinear(base, rank=2, alpha=4.0)
    with torch.no_grad():
        ours.lora_A.copy_(mine.lora_A)
        mine.lora_B.normal_()
        ours.lora_B.copy_(mine.lora_B)
    x = torch.randn(3, 8)
    torch.testing.assert_close(mine(x), ours(x))
    torch.testing.assert_close(
        nb01.merged_weight(base.weight, mine.lora_A, mine.lora_B, 2.0),
        base.weight + ours.delta_weight(),
    )


def test_ts_forward_matches_mtlora_linear() -> None:
    from mtlora_lite import MTLoRALinear

    layer = MTLoRALinear(nn.Linear(8, 6), 4, {"a": 2, "b": 2}).eval()
    with torch.no_grad():
        for branch in [layer, *layer.tasks.values()]:
            branch.lora_B.normal_()
    x, xt = torch.randn(5, 8), torch.randn(2, 5, 8)
    A_t = torch.stack([t.lora_A for t in layer.tasks.values()])
    B_t = torch.stack([t.lora_B for t in layer.tasks.values()])
    W, b = layer.base_layer.weight, layer.base_layer.bias
    with torch.no_grad():
        shared, tasks = layer.forward_streams(x, xt)
        mine = nb03.ts_forward(x, xt, W, b, layer.lora_A, layer.lora_B, A_t, B_t, layer.scaling)
        torch.testing.assert_close(mine[0], shared)
        torch.testing.assert_close(mine[1], tasks)
        layer.merge()  # the official mode keeps y_t after merging, as the exercise computes
        merged = nb03.task_output_after_merge(
            x, xt[0], W, b, layer.lora_A, layer.lora_B, A_t[0], B_t[0], layer.scaling
        )
        torch.testing.assert_close(merged, tasks[0], atol=1e-5, rtol=1e-5)


def test_multihead_references_match_the_package() -> None:
    from mtlora_lite import MultiHeadLoRALinear, mark_only_adapters_trainable
    from mtlora_lite.adapters.heads import head_cosine_matrix

    torch.manual_seed(0)
    layer = MultiHeadLoRALinear(nn.Linear(8, 6), n_heads=3, rank=2, init="hydra")
    mark_only_adapters_trainable(layer)
    x = torch.randn(7, 8)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)  # all B_i are zero: the step-0 gradient of the exercise
    w = layer.router_weights(x).detach()
    grads = nb04.head_gradients(x, g, layer.lora_A.detach(), w, layer.scaling)
    torch.testing.assert_close(grads, layer.lora_B.grad.permute(1, 0, 2))
    with torch.no_grad():
        layer.lora_B.normal_()
        W, b, r = layer.base_layer.weight, layer.base_layer.bias, layer.router
        out = nb04.multihead_forward(x, W, b, layer.lora_A, layer.lora_B, r, layer.scaling)
        torch.testing.assert_close(out, layer(x))
    i, j = torch.triu_indices(3, 3, offset=1)
    expected = head_cosine_matrix(layer)[i, j].mean().item()
    assert math.isclose(nb04.head_cosine(layer.lora_B.detach()), expected, rel_tol=1e-5)


def test_offset_weight_starts_an_rlora_layer_at_the_base_function() -> None:
    from mtlora_lite import MultiHeadLoRALinear

    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = MultiHeadLoRALinear(base, n_heads=4, rank=2, init="rlora").eval()
    c = nb05.rlora_scale(8)
    assert math.isclose(c, 8**0.25 / 8)
    with torch.no_grad():
        W_eff = nb05.offset_weight(base.weight, layer.lora_A, layer.lora_B, layer.scaling)
        x = torch.randn(5, 16)
        u = x @ layer.lora_A.T
        w = layer.router_weights(x)  # uniform at init
        update = layer.scaling * sum(w[:, i : i + 1] * u @ layer.lora_B[:, i].T for i in range(4))
        torch.testing.assert_close(x @ W_eff.T + base.bias + update, base(x))
        torch.testing.assert_close(layer(x), base(x))


def test_verdict_follows_the_paired_rule() -> None:
    from mtlora_lite.course.compare import paired

    for a, b, _ in nb05.VERDICT_CASES:
        assert nb05.verdict(a, b) == paired(a, b).outcome


def test_merge_lora_and_peft_config_match_the_package(tmp_path) -> None:
    import json

    from mtlora_lite import LoRALinear, export_peft, inject_lora, mark_only_adapters_trainable

    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    torch.testing.assert_close(nb06.merge_lora(layer)(x), layer(x))
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    inject_lora(model, ["0"], rank=4, alpha=8.0)
    mark_only_adapters_trainable(model, extra=["2"])
    config = json.loads((export_peft(model, tmp_path) / "adapter_config.json").read_text())
    mine = nb06.peft_config(4, 8.0, ["0"], ["2"])
    assert {k: config[k] for k in mine} == mine


def test_rotating_a_normal_map_is_what_the_pascal_augmentation_does() -> None:
    """The augmentation turns pixels and vectors as the exercise does, about OpenCV's pivot
    (pixel index W / 2, H / 2), half a pixel off the centre: a quarter turn about it is the
    exercise's turn about the centre, shifted by s = (R - I) (1/2, 1/2) pixels (one pixel), with
    the row or column that comes from outside the image left out of the comparison."""
    import numpy as np

    from mtlora_lite.multitask.pascal.transforms import PIVOT_SHIFT, Augment, warp

    size = 6
    normals = nb07._normal_map(size, size)  # (3, H, W) unit vectors
    sample = {
        "image": np.zeros((size, size, 3), np.uint8),
        "normals": normals.permute(1, 2, 0).numpy(),
    }
    for angle, k in ((90.0, 1), (180.0, 2), (-90.0, 3)):
        aug = Augment(angle=angle)
        _, targets = warp(sample, size, aug)
        sx, sy = ((aug.rotation() - torch.eye(2)) @ torch.full((2,), PIVOT_SHIFT)).round().int()
        ours = nb07.rotate_normal_map(normals, k)  # out[y, x] == ours[y + sy, x + sx]
        rows, cols = slice(max(0, -sy), size - max(0, sy)), slice(max(0, -sx), size - max(0, sx))
        moved = ours[:, max(0, sy) : size + min(0, sy), max(0, sx) : size + min(0, sx)]
        torch.testing.assert_close(targets["normals"][:, rows, cols], moved, atol=1e-4, rtol=1e-4)
    _, flipped = warp(sample, size, Augment(flip=True))
    torch.testing.assert_close(nb07.flip_normals(normals), flipped["normals"], atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------------
# the notebooks hold each exercise as its stub cell followed by its check cell
# -------------------------------------------------------------------------------------------------

NOTEBOOK_FILES = sorted(
    (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")
)
COMPLETE = {"00", "01", "02", "03", "04", "05", "06", "07"}  # hold all their exercises


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_holds_its_exercises_as_stub_then_check(path: Path) -> None:
    cells = json.loads(path.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    ex = load_exercises(path.stem)
    present = [e for e in ex if e.check_cell in code]
    if path.stem[:2] in COMPLETE:
        assert len(present) == len(ex), f"missing: {[e.title for e in ex if e not in present]}"
    for e in present:
        i = code.index(e.check_cell)
        assert code[i - 1] == e.stub, f"the cell before {e.check_cell!r} must be its stub"
    if present:  # the check cells call `ex`: set up by setup() or load_exercises()
        assert any("ex = nb.exercises" in c or "ex = load_exercises(" in c for c in code)
