"""Course experiments: one recipe per profile, so that methods are compared on equal terms.

    r = run_dense("mtlora", ["semseg", "parts", "saliency", "normals"], profile="course")
    r = run_mixture("multihead", init="rlora", dropout_mode="per_head_ax", seed=1)

A ``Recipe`` fixes the data sizes, batch size, epochs and learning rates of a profile; only the
method and its options change between runs. The data of a run come from its seed (scenes and
shuffling) and are the same for every method with that seed, so single-task and multi-task models
are measured on the same images.

Each result is cached as JSON under ``cache_dir`` (default ``outputs/cache``, git-ignored), keyed
by everything that defines the run (recipe, method, options, tasks, seed, device type, the sha256
of the backbone checkpoint, the package version and a digest of the package's source code, so
that any change to the code makes every run new). A cached result is a real measurement of exactly
that run by this code, made earlier (notebook 03 reuses the single-task
references notebook 02 measured); delete the folder or pass ``cache_dir=None`` to measure again.

What the cache guarantees under kills, full disks and damaged entries is stated once, in the
README's "What the cache guarantees"; ``_cached_run`` below keeps it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import numbers
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from mtlora_lite import __version__
from mtlora_lite.adapters.atomic import check_writable
from mtlora_lite.adapters.blocks import inject_qkv_lora
from mtlora_lite.adapters.checks import check_positive
from mtlora_lite.adapters.freezing import mark_only_adapters_trainable
from mtlora_lite.adapters.heads import adapter_spectra, router_statistics
from mtlora_lite.adapters.lora import inject_lora
from mtlora_lite.adapters.mtlora import MTLoRAConfig
from mtlora_lite.adapters.multihead import inject_multihead_lora
from mtlora_lite.adapters.targets import TIMM_TARGETS
from mtlora_lite.course.backbones import load_backbone, load_course_card
from mtlora_lite.course.data import (
    LOADER_SEED_LIMIT,
    make_loaders,
    make_mixture_loaders,
)
from mtlora_lite.course.records import RunResult, read_record, run_record, write_record
from mtlora_lite.course.scene_tasks import build_tasks
from mtlora_lite.course.scenes import check_seed
from mtlora_lite.multitask.history import Callback, HeadSimilarityRecorder
from mtlora_lite.multitask.models import METHODS, build_model
from mtlora_lite.multitask.runtime import resolve_device, seed_everything
from mtlora_lite.multitask.train import fit

DENSE_TASKS = ("semseg", "parts", "saliency", "normals")  # PASCAL-Context's four, in miniature
# run_dense's methods: build_model's, and "lora", plain LoRA (LoRALinear) + the task decoders only
DENSE_METHODS = (*METHODS, "lora")
# 1x1 projection widths of the dense decoders for the course Swin's four stages. Small on
# purpose: the decoders are then cheap (with twice these widths they took most of a multi-task
# training step) and leave more of each task's work to the backbone and its adapters.
DECODER_CHANNELS = (4, 8, 16, 32)
N_STAGES = 4  # stages of the course Swin


@dataclass(frozen=True)
class Recipe:
    """Data and schedule of one profile. ``lr`` maps a method to its peak learning rate;
    ``warmup`` is the fraction of the steps spent warming up to it (``fit``'s ``warmup``)."""

    n_train: int
    n_val: int
    batch_size: int
    epochs: int
    lr: tuple[tuple[str, float], ...]
    warmup: float = 0.05

    def lr_for(self, method: str) -> float:
        table = dict(self.lr)
        if method not in table:
            raise ValueError(
                f"the recipe has no learning rate for {method!r}; it has {list(table)}"
            )
        return table[method]


# Dense runs: full fine-tuning's default is the middle of the sweep FULL_LRS (notebooks 01-03
# sweep it for the single-task references); plain LoRA ("lora") trains best a little higher than
# MTLoRA's layers at this short schedule. A fifth of the steps warm up: with 5 %, fully fine-tuned
# models collapsed on some seeds (e.g. saliency predicting no salient pixel).
_DENSE_LR = (
    ("full", 2e-3),
    ("decoders", 3e-3),
    ("shared_lora", 2e-3),
    ("mtlora", 2e-3),
    ("lora", 4e-3),
)
FULL_LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)  # the learning-rate sweep of the single-task references

# Sized so that notebooks 01-03 (56 dense runs over three seeds) take about 10 min on 2 idle CPU
# cores (two runs at a time, see run_dense_many): 64 steps of 16 scenes, each scene seen once.
DENSE_RECIPES = {
    "smoke": Recipe(n_train=32, n_val=16, batch_size=16, epochs=1, lr=_DENSE_LR, warmup=0.2),
    "course": Recipe(n_train=1024, n_val=256, batch_size=16, epochs=1, lr=_DENSE_LR, warmup=0.2),
}
# The mixture's single epoch (96 steps) needs a larger step than the dense recipes: for plain
# LoRA (rank 4) and R-LoRA (4 heads of rank 4) on the last two stages, 8e-3 beat 2e-3 and 2e-2 on
# each of seeds 0-2 (2e-2 diverged on some seeds). At 2e-3 every variant is starved of steps, and
# whatever enlarges the effective step (a higher rank, a router-free sum of heads) wins.
_MIXTURE_LR = (("lora", 8e-3), ("multihead", 8e-3))
MIXTURE_RECIPES = {
    "smoke": Recipe(n_train=32, n_val=24, batch_size=16, epochs=1, lr=_MIXTURE_LR),
    "course": Recipe(n_train=3072, n_val=768, batch_size=32, epochs=1, lr=_MIXTURE_LR),
}


def recipe(kind: str, profile: str) -> Recipe:
    """The ``"dense"`` or ``"mixture"`` recipe of ``profile`` ("smoke" or "course")."""
    table = {"dense": DENSE_RECIPES, "mixture": MIXTURE_RECIPES}[kind]
    if profile not in table:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(table)}")
    return table[profile]


def tree_digest(root: Path) -> str:
    """A sha256 (16 hex digits) of every ``*.py`` file under ``root``, with its relative path."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def source_digest() -> str:
    """``tree_digest`` of the installed package: it changes whenever the code that trains,
    evaluates or records a run changes."""
    return tree_digest(Path(__file__).resolve().parents[1])


def _spec(
    kind: str,
    name: str,
    seed: int,
    rec: Recipe,
    lr: float,
    options: dict[str, Any],
    device: str,
    **extra: Any,
) -> dict[str, Any]:
    """Everything that defines a run: its cache key (device type, backbone checksum, package
    version and source digest included)."""
    return dict(
        kind=kind,
        name=name,
        seed=seed,
        recipe=dataclasses.asdict(rec),
        lr=lr,
        options=options,
        device=resolve_device(device).type,
        backbone=load_course_card()["sha256"],
        package=__version__,
        code=source_digest(),
        **extra,
    )


def _key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """``value`` with integer and real scalars of any type (e.g. ``np.int64``) as Python numbers,
    so that options are JSON (the cache key and the record) and equal options give equal keys."""
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


CACHE_FIX = "pass cache_dir=None to train without the cache, or cache_dir=<a writable folder>"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,99}")


def check_run_name(name: object) -> str:
    """``name`` if it is a safe file-name stem for the cache (``<name>-<key>.json``): 1 to 100
    characters, letters, digits and ``. _ + = , @ -``, starting with a letter or digit, no
    ``..``; so no separators, no absolute paths, no hidden files, nothing outside ``cache_dir``."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"run name {name!r} is not a safe file name: use 1 to 100 letters, digits and "
            "'._+=,@-', starting with a letter or digit, without '..' (no '/', '\\' or absolute "
            "paths: every run is recorded directly in cache_dir), e.g. 'mtlora-r8-seed1'"
        )
    return name


def _cached_run(
    spec: dict[str, Any], cache_dir: str | Path | None, train: Callable[[], RunResult]
) -> RunResult:
    """``train()`` unless a result for exactly ``spec`` is in ``cache_dir`` (module docstring:
    what the cache guarantees)."""
    if not cache_dir:
        return train()
    try:
        json.dumps(spec)  # what write_record will do after training
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"a run's options must be JSON values (numbers, strings, lists, dicts) to be cached: "
            f"{err}; pass them as such, or cache_dir=None to train without the cache"
        ) from err
    path = Path(cache_dir) / f"{spec['name']}-{_key(spec)}.json"
    if path.exists():
        try:
            return read_record(path)
        except (OSError, ValueError) as err:
            warnings.warn(
                f"{err}: ignoring this cache entry, training the run again (the new result "
                "will replace it)",
                stacklevel=3,
            )
    check_writable(path.parent, CACHE_FIX)  # before training, not after
    result = train()
    try:
        write_record(result, path, spec=spec)
    except OSError as err:
        warnings.warn(
            f"the run finished but could not be cached ({err}); its result is returned, not "
            "recorded",
            stacklevel=3,
        )
    return result


def _in_cache(spec: dict[str, Any], cache_dir: str | Path | None) -> RunResult | None:
    """The cached result of exactly ``spec``, or None (an unreadable entry: None too; the run
    itself then says so and trains again)."""
    if not cache_dir:
        return None
    path = Path(cache_dir) / f"{spec['name']}-{_key(spec)}.json"
    try:
        return read_record(path) if path.exists() else None
    except (OSError, ValueError):
        return None


def _check_run(seed: object, lr: float | None, rec: Recipe, method: str) -> tuple[int, float]:
    """The seed and learning rate of a run, checked before anything trains: the seed in
    [0, 2**31) (the loaders' scene seeds are 2 * seed and 2 * seed + 1), ``lr`` finite and > 0,
    or None for the recipe's."""
    seed = check_seed(seed, LOADER_SEED_LIMIT, " and the scene seeds are 2 * seed and 2 * seed + 1")
    if lr is None:
        return seed, rec.lr_for(method)
    return seed, check_positive(lr, "lr", "pass lr=None for the recipe's learning rate")


def _train(
    name: str,
    method: str,
    model: nn.Module,
    tasks: dict,
    loaders: tuple,
    rec: Recipe,
    lr: float,
    seed: int,
    device: str,
    progress: bool,
    options: dict[str, Any],
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    history = fit(
        model,
        tasks,
        *loaders,
        epochs=rec.epochs,
        lr=lr,
        warmup=rec.warmup,
        device=device,
        seed=seed,
        progress=progress,
        callbacks=callbacks,
    )
    return run_record(
        name,
        method,
        tasks,
        history,
        model,
        seed=seed,
        options=options,
        device=str(resolve_device(device)),
    )


def lora_model(
    tasks: Sequence[Any],
    *,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Sequence[str] = TIMM_TARGETS,
    qkv_blocks: Sequence[str] | None = None,
) -> nn.Module:
    """Pure LoRA on the course Swin: plain ``LoRALinear`` (s = ``alpha`` / ``rank``) on
    ``targets`` of every block, and the task decoders; nothing else of the backbone trains.

    ``qkv_blocks`` (e.g. ``("q", "v")``) adapts only those blocks of the fused ``attn.qkv``
    (``inject_qkv_lora``; "attn.qkv" must then be among ``targets``). ``tasks`` as for
    ``build_model``.
    """
    model = build_model(
        load_backbone("course"),
        tasks,
        "decoders",
        features="stage",
        decoder_channels=DECODER_CHANNELS,
    )
    plain = list(targets)
    if qkv_blocks is not None:
        if "attn.qkv" not in plain:
            raise ValueError(
                f"qkv_blocks adapts blocks of attn.qkv, which is not among targets {plain}: add "
                "it, or pass qkv_blocks=None"
            )
        plain.remove("attn.qkv")
        inject_qkv_lora(model.encoder, qkv_blocks, rank=rank, alpha=alpha, dropout=dropout)
    if plain:
        inject_lora(model.encoder, plain, rank=rank, alpha=alpha, dropout=dropout)
    mark_only_adapters_trainable(model, extra=["decoders"])
    return model


def run_dense(
    method: str,
    tasks: str | Sequence[str] = DENSE_TASKS,
    *,
    profile: str = "course",
    seed: int = 0,
    device: str = "auto",
    name: str | None = None,
    lr: float | None = None,
    cache_dir: str | Path | None = "outputs/cache",
    progress: bool = True,
    **options: Any,
) -> RunResult:
    """Train the course Swin on dense scene tasks with ``build_model(method, **options)``.

    ``method`` is "full", "decoders", "shared_lora" or "mtlora" (``multitask.models``), or
    "lora": pure LoRA, ``lora_model(**options)`` (e.g. ``rank=8, alpha=16``); one task with
    "full" is single-task fine-tuning. MTLoRA options equal to ``MTLoRAConfig``'s defaults are
    left out of the run's options (and its cache key): ``shared_rank=16`` is the same run as
    no option. Features are the raw stage maps (strides 4-32, better
    suited to 64 x 64 scenes than the official merged maps) with ``DECODER_CHANNELS``. ``lr``
    (finite, > 0) replaces the recipe's learning rate; ``seed`` is in [0, 2**31).
    """
    spec, train = _dense_run(method, tasks, profile, seed, device, name, lr, progress, options)
    return _cached_run(spec, cache_dir, train)


def cached_dense(
    method: str,
    tasks: str | Sequence[str] = DENSE_TASKS,
    *,
    profile: str = "course",
    seed: int = 0,
    device: str = "auto",
    name: str | None = None,
    lr: float | None = None,
    cache_dir: str | Path | None = "outputs/cache",
    progress: bool = True,
    **options: Any,
) -> RunResult | None:
    """What ``run_dense`` with the same arguments (checked as it checks them) would read from
    the cache, or None where it would train."""
    spec, _ = _dense_run(method, tasks, profile, seed, device, name, lr, progress, options)
    return _in_cache(spec, cache_dir)


def _dense_run(
    method: str,
    tasks: str | Sequence[str],
    profile: str,
    seed: int,
    device: str,
    name: str | None,
    lr: float | None,
    progress: bool,
    options: dict[str, Any],
) -> tuple[dict[str, Any], Callable[[], RunResult]]:
    """The spec (cache key) of a ``run_dense`` call and the function that trains it, after
    checking every argument."""
    if method not in DENSE_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {DENSE_METHODS}")
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    build_tasks(tasks)  # unknown, duplicate or no tasks: refused before anything trains
    if method == "lora":  # missing or unknown options: refused before anything trains
        try:
            inspect.signature(lora_model).bind(tasks, **options)
        except TypeError as err:
            raise TypeError(f"method 'lora' takes the options of lora_model: {err}") from err
    rec = recipe("dense", profile)
    seed, lr = _check_run(seed, lr, rec, method)
    options = _plain(options)
    if method in ("shared_lora", "mtlora"):  # the same run however it is spelled
        defaults = _plain(dataclasses.asdict(MTLoRAConfig()))
        options = {k: v for k, v in options.items() if k not in defaults or v != defaults[k]}
    name = check_run_name(name or f"{method}-{'+'.join(tasks)}")
    spec = _spec("dense", name, seed, rec, lr, options, device, method=method, tasks=list(tasks))

    def train() -> RunResult:
        seed_everything(seed)  # model init too, so that a run does not depend on earlier ones
        task_map = build_tasks(tasks)
        loaders = make_loaders(
            list(tasks), n_train=rec.n_train, n_val=rec.n_val, seed=seed, batch_size=rec.batch_size
        )
        if method == "lora":
            model = lora_model(list(task_map.values()), **options)
        else:
            model = build_model(
                load_backbone("course"),
                list(task_map.values()),
                method,
                features="stage",
                decoder_channels=DECODER_CHANNELS,
                **options,
            )
        return _train(
            name, method, model, task_map, loaders, rec, lr, seed, device, progress, options
        )

    return spec, train


def mixture_targets(stages: Sequence[int] | None = None) -> list[str] | re.Pattern:
    """Targets for ``inject_lora`` / ``inject_multihead_lora`` on the course Swin: qkv / proj /
    fc1 / fc2 of every block of ``stages`` (indices 0-3, at least one), or of every stage (None).
    """
    if stages is None:
        return list(TIMM_TARGETS)
    given = list(stages)
    if not given or any(
        isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < N_STAGES
        for k in given
    ):
        raise ValueError(
            f"stages must be stage indices in 0-{N_STAGES - 1} (at least one), got {stages!r}; "
            "pass None to adapt every stage"
        )
    names = "|".join(re.escape(t) for t in TIMM_TARGETS)
    layers = "|".join(str(k) for k in sorted({int(k) for k in given}))
    return re.compile(rf"(?:.*\.)?layers\.(?:{layers})\.blocks\.\d+\.(?:{names})")


def run_mixture(
    adapter: str = "multihead",
    *,
    profile: str = "course",
    seed: int = 0,
    device: str = "auto",
    name: str | None = None,
    lr: float | None = None,
    n_heads: int = 4,
    rank: int = 4,
    init: str = "hydra",
    dropout: float = 0.05,
    dropout_mode: str = "shared",
    router: bool = True,
    stages: Sequence[int] | None = None,
    similarity_every: int = 10,
    cache_dir: str | Path | None = "outputs/cache",
    progress: bool = True,
) -> RunResult:
    """Fine-tune the course Swin on the task mixture (count / shape / colour, one per image).

    ``adapter="multihead"``: multi-head LoRA (``n_heads`` heads of rank ``rank``, ``init``,
    ``dropout_mode``, ``router``) on qkv / proj / fc1 / fc2, with head similarity recorded every
    ``similarity_every`` steps and router statistics per task at the end. ``adapter="lora"``: one
    plain LoRA of rank ``n_heads * rank`` (rank-matched; ``n_heads=1`` gives rank ``rank``).
    ``stages``: the Swin stages (0-3) whose blocks get adapters, e.g. ``(2, 3)`` for the last two;
    None: every stage. The head over the union answer space is trained too; the rest of the
    backbone is frozen. ``lr`` (finite, > 0) replaces the recipe's learning rate; ``seed`` is in
    [0, 2**31). ``extras["spectra"]`` holds every adapted layer's ``head_spectra`` after training
    (singular values, as lists: "heads" and "update").
    """
    if adapter not in ("multihead", "lora"):
        raise ValueError(f"adapter must be 'multihead' or 'lora', got {adapter!r}")
    rec = recipe("mixture", profile)
    seed, lr = _check_run(seed, lr, rec, adapter)
    targets = mixture_targets(stages)
    heads = dict(n_heads=n_heads, init=init, dropout_mode=dropout_mode, router=router)
    options: dict[str, Any] = _plain(
        dict(rank=rank, dropout=dropout, **(heads if adapter == "multihead" else {}))
    )
    if adapter == "lora":
        options["rank"] = _plain(n_heads * rank)
    if stages is not None:  # absent for every stage, so that those runs keep their cache keys
        options["stages"] = sorted({int(k) for k in stages})
    name = check_run_name(name or adapter)
    spec = _spec(
        "mixture",
        name,
        seed,
        rec,
        lr,
        options,
        device,
        adapter=adapter,
        similarity_every=_plain(similarity_every),
    )

    def train() -> RunResult:
        seed_everything(seed)
        task_map = build_tasks(["answer"])
        loaders = make_mixture_loaders(
            n_train=rec.n_train, n_val=rec.n_val, seed=seed, batch_size=rec.batch_size
        )
        model = build_model(load_backbone("course"), list(task_map.values()), "decoders")
        if adapter == "multihead":
            inject_multihead_lora(model.encoder, targets, rank=rank, dropout=dropout, **heads)
        else:
            inject_lora(model.encoder, targets, rank=options["rank"], dropout=dropout)
        mark_only_adapters_trainable(model, extra=["decoders"])
        recorder = (
            [HeadSimilarityRecorder(every=similarity_every)] if adapter == "multihead" else []
        )
        result = _train(
            name,
            adapter,
            model,
            task_map,
            loaders,
            rec,
            lr,
            seed,
            device,
            progress,
            options,
            recorder,
        )
        result.extras["spectra"] = {
            layer: {"heads": sp.heads.tolist(), "update": sp.update.tolist()}
            for layer, sp in adapter_spectra(model).items()
        }
        if recorder:
            result.extras["similarity"] = recorder[0].to_dict()
            if router:
                stats = router_statistics(model, loaders[1], task_of=lambda t: t["answer"][:, 1])
                result.extras["router"] = {
                    layer: {
                        "mean_weight": s.mean_weight,
                        "entropy": s.entropy,
                        "per_task": {str(t): dataclasses.asdict(p) for t, p in s.per_task.items()},
                    }
                    for layer, s in stats.items()
                }
        return result

    return _cached_run(spec, cache_dir, train)
