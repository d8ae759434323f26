"""How the processes of a torchrun launch find each other, without hanging for half an hour.

    env = torchrun_environment()       # rank, world size, local rank, master address: checked
    store = meet(env, timeout_s)       # every rank arrived within timeout_s, or who did not

``torchrun_environment`` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` and refuses, with the fix, what torch would turn into a raw traceback or a hang:
values that are not integers, ``RANK`` outside ``0 .. WORLD_SIZE - 1`` (e.g. ``RANK`` set without
``WORLD_SIZE``), no master address or port when ``WORLD_SIZE > 1``.

``meet`` is the first exchange between the processes: each rank connects to the store that
torchrun's agent serves at ``MASTER_ADDR:MASTER_PORT`` (or that rank 0 serves, without
torchrun), writes that it arrived, and waits for all others for ``START_TIMEOUT_S`` seconds
(60 by default; the environment variable ``MTLORA_START_TIMEOUT_S`` sets another), not torch's
30 minutes. A rank that does not arrive in time is named in the error every other rank raises.
The process group is then created on this store with the long timeout of training.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import torch.distributed as dist

START_TIMEOUT_S = 60.0
TIMEOUT_VARIABLE = "MTLORA_START_TIMEOUT_S"
FIX = "start the script with torchrun (it sets them), or unset them to run in one process"


@dataclass(frozen=True)
class TorchrunEnvironment:
    """What torchrun told this process (``torchrun_environment``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = ""
    master_port: int = 0


def _integer(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={value!r} is not an integer; {FIX}"
        ) from None


def torchrun_environment() -> TorchrunEnvironment:
    """The launch variables of this process, checked (module docstring); a process without them
    is rank 0 of 1."""
    world = _integer("WORLD_SIZE", 1)
    rank = _integer("RANK", 0)
    local = _integer("LOCAL_RANK", 0)
    if world < 1:
        raise ValueError(f"WORLD_SIZE={world}: it must be at least 1; {FIX}")
    if not 0 <= rank < world:
        unset = "" if "WORLD_SIZE" in os.environ else " (WORLD_SIZE is not set)"
        raise ValueError(
            f"RANK={rank} but WORLD_SIZE={world}{unset}: a rank must be in 0..{world - 1}; {FIX}"
        )
    if local < 0:
        raise ValueError(f"LOCAL_RANK={local} must be >= 0; {FIX}")
    if world == 1:
        return TorchrunEnvironment(rank, world, local)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {' and '.join(missing)} not set: the processes cannot find "
            f"each other; {FIX}"
        )
    port = _integer("MASTER_PORT", 0)
    if not 0 < port < 2**16:
        raise ValueError(f"MASTER_PORT={port} is not a port (1..65535); {FIX}")
    return TorchrunEnvironment(rank, world, local, os.environ["MASTER_ADDR"], port)


def start_timeout_s() -> float:
    """``MTLORA_START_TIMEOUT_S`` if set (a positive number), else ``START_TIMEOUT_S``."""
    value = os.environ.get(TIMEOUT_VARIABLE)
    if value is None:
        return START_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}={value!r} must be a number of seconds > 0")
    return seconds


def meet(env: TorchrunEnvironment, timeout_s: float | None = None) -> dist.Store:
    """Connect to the launch's store and wait until every rank has arrived (module docstring);
    returns the store. Raises ``RuntimeError`` naming the ranks that did not arrive in time, or
    saying that the store could not be reached."""
    seconds = start_timeout_s() if timeout_s is None else timeout_s
    timeout = dt.timedelta(seconds=seconds)
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun serves it
    where = f"{env.master_addr}:{env.master_port}"
    try:
        store = dist.TCPStore(
            env.master_addr,
            env.master_port,
            env.world_size,
            is_master=env.rank == 0 and not agent,
            timeout=timeout,
            wait_for_workers=False,
            multi_tenant=not agent,
        )
    except (RuntimeError, OSError) as err:  # DistError is a RuntimeError
        host = "torchrun's agent" if agent else "rank 0"
        raise RuntimeError(
            f"rank {env.rank} could not reach the store at {where} that {host} serves within "
            f"{seconds:g} s ({err}). Is {host} running, and are MASTER_ADDR / MASTER_PORT right? "
            f"({TIMEOUT_VARIABLE} sets the wait)"
        ) from err
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    arrivals = dist.PrefixStore(f"mtlora_lite/arrived/{attempt}", store)
    arrivals.set(str(env.rank), "1")
    try:
        arrivals.wait([str(r) for r in range(env.world_size)], timeout)
    except RuntimeError as err:
        missing = [r for r in range(env.world_size) if not arrivals.check([str(r)])]
        raise RuntimeError(
            f"rank(s) {missing} of {env.world_size} did not arrive within {seconds:g} s (rank "
            f"{env.rank} waited at {where}): did their processes start, or fail before training? "
            f"Their own output says why. ({TIMEOUT_VARIABLE} sets the wait)"
        ) from err
    return store
