"""W&B sweeps over msma experiments: create a sweep and run an agent, or simulate the agent offline.

``python -m msma.sweep experiments/sweeps/<name>.yaml [--count N] [--project P] [--entity E]`` (``make sweep
SWEEP=<name>``) creates the sweep on the W&B server and starts ``wandb agent`` on it. Each trial runs the sweep's
``command``; the agent replaces ``${args_no_hyphens}`` by ``key=value`` pairs, which are Hydra overrides for
``msma train --config-name <experiment>``.

:func:`agent_commands` reproduces what the agent would run for parameter sets sampled here (grid: the Cartesian
product; random/bayes: draws from each parameter's distribution, as the first bayes suggestions are), using wandb's
own argument formatting (``wandb.sdk.launch.sweeps.utils``), so the test suite can run every sweep file offline.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_METHODS = ("grid", "random", "bayes")


class SweepConfigError(ValueError):
    """A sweep file that W&B (or msma) would reject."""


def load_sweep(path: str | Path) -> dict[str, Any]:
    """Reads and checks a W&B sweep YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"{path}: sweep file not found")
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise SweepConfigError(f"{path}: not a YAML mapping")
    method = cfg.get("method")
    if method not in SUPPORTED_METHODS:
        raise SweepConfigError(f"{path}: method must be one of {SUPPORTED_METHODS}, got {method!r}")
    if method == "bayes" and "metric" not in cfg:
        raise SweepConfigError(f"{path}: a bayes sweep needs a metric")
    params = cfg.get("parameters")
    if not isinstance(params, dict) or not params:
        raise SweepConfigError(f"{path}: no parameters")
    command = cfg.get("command")
    if not isinstance(command, list) or "${args_no_hyphens}" not in command:
        raise SweepConfigError(f"{path}: command must be a list containing ${{args_no_hyphens}} (Hydra overrides)")
    for name, spec in params.items():
        if not isinstance(spec, dict) or not ({"value", "values", "min", "distribution"} & spec.keys()):
            raise SweepConfigError(f"{path}: parameter {name!r} has no value(s)/min/max/distribution")
        if method == "grid" and not ({"value", "values"} & spec.keys()):
            raise SweepConfigError(f"{path}: grid parameter {name!r} needs value or values")
    return cfg


def _draw(name: str, spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        probs = spec.get("probabilities")
        return rng.choices(spec["values"], weights=probs)[0] if probs else rng.choice(spec["values"])
    dist = spec.get("distribution")
    lo: Any = spec.get("min")
    hi: Any = spec.get("max")
    if dist != "normal" and (lo is None or hi is None):
        raise SweepConfigError(f"parameter {name!r}: distribution {dist!r} needs min and max")
    if dist is None:
        dist = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist == "uniform":
        return rng.uniform(float(lo), float(hi))
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(float(lo)), math.log(float(hi))))
    if dist == "log_uniform":  # min/max are natural-log exponents (W&B's definition)
        return math.exp(rng.uniform(float(lo), float(hi)))
    if dist == "q_uniform":
        q = float(spec.get("q", 1.0))
        return round(rng.uniform(float(lo), float(hi)) / q) * q
    if dist == "normal":
        return rng.gauss(float(spec.get("mu", 0.0)), float(spec.get("sigma", 1.0)))
    if dist == "categorical":
        return rng.choice(spec["values"])
    raise SweepConfigError(f"parameter {name!r}: unsupported distribution {dist!r}")


def sample_parameters(sweep: dict[str, Any], count: int, seed: int = 0) -> list[dict[str, Any]]:
    """Parameter sets the agent could run: the first ``count`` grid points, or ``count`` random draws."""
    params: dict[str, dict[str, Any]] = sweep["parameters"]
    if sweep["method"] == "grid":
        axes = [
            [(k, v) for v in (spec["values"] if "values" in spec else [spec["value"]])] for k, spec in params.items()
        ]
        return [dict(point) for point in itertools.islice(itertools.product(*axes), count)]
    rng = random.Random(seed)
    return [{k: _draw(k, spec, rng) for k, spec in params.items()} for _ in range(count)]


def agent_command(sweep: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` would run for ``parameters`` (macros expanded with wandb's own helpers)."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    command = {"args": {k: {"value": v} for k, v in parameters.items()}, "program": sweep.get("program")}
    sweep_vars: dict[str, Any] = sweep_utils.create_sweep_command_args(command)
    # What wandb_agent.Agent._command_run adds before expanding the command.
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [sweep.get("program")]
    sweep_vars["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for token in sweep_utils.create_sweep_command(sweep["command"]):
        token = str(token)
        if token.startswith("${") and token.endswith("}"):
            out += [str(t) for t in (sweep_vars.get(token[2:-1]) or [])]
        else:
            out.append(token)
    return out


def agent_commands(path: str | Path, count: int = 3, seed: int = 0) -> list[list[str]]:
    """Commands for ``count`` simulated trials of the sweep in ``path``."""
    sweep = load_sweep(path)
    return [agent_command(sweep, p) for p in sample_parameters(sweep, count, seed)]


def hydra_overrides(command: list[str]) -> tuple[str, list[str]]:
    """Splits an agent command into (experiment name, Hydra overrides); the command must run ``msma train``."""
    if "train" not in command or "--config-name" not in command:
        raise SweepConfigError(f"sweep command does not run `msma train --config-name ...`: {command}")
    i = command.index("--config-name")
    return command[i + 1], command[i + 2 :]


def _wandb_reachable() -> str | None:
    """None when W&B can be used, else the reason it cannot."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        return f"WANDB_MODE={os.environ['WANDB_MODE']}"
    try:
        import wandb

        api = wandb.Api(timeout=10)
        api.viewer  # noqa: B018 - raises when there is no account or no connection
    except Exception as exc:  # any failure means "not reachable" and is reported
        return f"{type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msma.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="experiments/sweeps/<name>.yaml")
    parser.add_argument("--project", default=os.environ.get("WANDB_PROJECT", "msma"))
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"))
    parser.add_argument("--count", type=int, default=None, help="trials for this agent (default: until the sweep ends)")
    parser.add_argument("--dry-run", action="store_true", help="print 3 simulated agent commands and exit")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    if args.dry_run:
        for cmd in agent_commands(args.sweep, 3):
            print(" ".join(cmd))
        return 0
    reason = _wandb_reachable()
    if reason is not None:
        print(
            f"msma.sweep: W&B is not reachable ({reason}).\n"
            "  Log in with `wandb login` (or set WANDB_API_KEY) on a machine with internet, then rerun.\n"
            f"  To see what the agent would run: python -m msma.sweep {args.sweep} --dry-run",
            file=sys.stderr,
        )
        return 2
    import wandb

    sweep_id = wandb.sweep(sweep, project=args.project, entity=args.entity)
    print(f"created sweep {sweep_id}; starting an agent")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # `msma` on PATH
    wandb_bin = shutil.which("wandb", path=env["PATH"]) or "wandb"
    target = "/".join(p for p in (args.entity, args.project, sweep_id) if p)
    cmd = [wandb_bin, "agent", target] + (["--count", str(args.count)] if args.count else [])
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
