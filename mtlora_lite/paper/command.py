"""Reproduce the MTLoRA paper's PASCAL-Context table: one command runs every model and writes our
numbers beside the paper's.

    python -m mtlora_lite.paper --data /path/to/PASCAL_MT --recipe paper-quick
    make paper DATA=/path/to/PASCAL_MT RECIPE=paper-quick             # the same
    torchrun --nproc_per_node 4 -m mtlora_lite.paper --data ... --recipe paper
    python -m mtlora_lite.paper --data /path/to/PASCAL_MT --check-data  # only check the files
    python -m mtlora_lite.paper --recipe fixture            # offline plumbing check

Recipes and runs: ``paper.recipes``; what is written under ``--out`` (default
``outputs/paper/<recipe>``): ``paper.run``; the table: ``paper.table``. Without ``--data`` the
command says what to download (the fixture recipe writes its own tiny archive). Before training,
every file of both splits is checked (``--check-data`` does only that); a call again resumes.

Exit status: 0 done, 2 bad input (a bad file, a wrong option, an unusable output folder: the
message says which and the fix), 1 the system failed (e.g. a full disk).
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from mtlora_lite.multitask.distributed import rank_and_world
from mtlora_lite.multitask.pascal.check import check_archive, report
from mtlora_lite.multitask.pascal.data import DOWNLOAD_URL
from mtlora_lite.multitask.pascal.fixture import write_pascal_fixture
from mtlora_lite.multitask.precision import PRECISIONS
from mtlora_lite.paper.outputs import prepare_out
from mtlora_lite.paper.recipes import RECIPES, RUNS, PaperRecipe
from mtlora_lite.paper.run import default_workers, run_recipe, run_tasks


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mtlora_lite.paper",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, help="the extracted PASCAL_MT folder (holds JPEGImages/)")
    p.add_argument("--recipe", default="paper-quick", choices=list(RECIPES))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS), metavar="RUN")
    p.add_argument("--out", type=Path, help="output folder (default outputs/paper/<recipe>)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--precision", choices=PRECISIONS, help="override the recipe's training precision"
    )
    for name in ("epochs", "max-steps", "batch-size", "img-size", "eval-every", "seed"):
        p.add_argument(f"--{name}", type=int, help="override the recipe's value")
    p.add_argument(
        "--workers", type=int, help="DataLoader processes (default: 8 on a GPU, 0 on a CPU)"
    )
    p.add_argument("--no-pretrained", action="store_true", help="random backbone (no download)")
    p.add_argument("--check-data", action="store_true", help="only check every file, then stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _recipe(args: argparse.Namespace) -> PaperRecipe:
    names = ("epochs", "max_steps", "batch_size", "img_size", "eval_every", "seed", "precision")
    overrides = {k: getattr(args, k) for k in names}
    return RECIPES[args.recipe].replace(
        **overrides, pretrained=False if args.no_pretrained else None
    )


def _data(args: argparse.Namespace, recipe: PaperRecipe, out: Path) -> Path | None:
    """``--data``, or for the fixture recipe its generated archive; None (and why) otherwise."""
    if args.data is not None:
        return args.data
    if recipe.name == "fixture":
        prepare_out(out)
        data = out / "PASCAL_MT_fixture"
        if not (data / "ImageSets/Context/val.txt").is_file():
            write_pascal_fixture(data)
        return data
    print(
        f"--data is needed: the path of the extracted PASCAL_MT archive. Download it (about 3 "
        f"GB) from {DOWNLOAD_URL}, extract it with `tar xzf PASCAL_MT.tgz`, and pass the folder "
        "that holds JPEGImages/. (`--recipe fixture` runs offline on a tiny generated archive "
        "instead.)",
        file=sys.stderr,
    )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring); returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        # checked first: a lone RANK=1 (no WORLD_SIZE) would train and record nothing, for only
        # rank 0 writes results; torchrun_environment refuses it, saying how to launch
        main_rank = rank_and_world()[0] == 0
        recipe = _recipe(args)
        out = args.out or Path("outputs/paper") / recipe.name
        data = _data(args, recipe, out)
        if data is None:
            return 2
        workers = default_workers(args.device) if args.workers is None else args.workers
        if args.check_data:
            tasks = run_tasks(args.runs)
            bad = check_archive(
                data, ("train", "val"), tasks, workers=workers, progress=not args.quiet
            )
            print(report(data, bad), file=sys.stderr if bad else sys.stdout)
            return 2 if bad else 0
        run_recipe(
            recipe,
            data,
            out,
            args.runs,
            device=args.device,
            workers=workers,
            progress=not args.quiet,
        )
    except ValueError as err:  # bad input: the launch, OutputError, DataCheckError, BadFileError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # MissingDataError (bad input), or the system: a full disk, ...
        print(f"error: {err}{_os_fix(err)}", file=sys.stderr)
        return 2 if isinstance(err, FileNotFoundError) else 1
    if main_rank:
        print((out / "results.md").read_text())
        print(f"written: {out / 'results.md'}, {out / 'results.json'}, runs under {out / 'runs'}")
    return 0


def _os_fix(err: OSError) -> str:
    if err.errno == errno.ENOSPC:
        return (
            ". The disk is full: free space on it or pass --out on another disk, then call "
            "again; finished runs are kept, and an interrupted one resumes from its last epoch."
        )
    return ""
