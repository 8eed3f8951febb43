"""The prepared device check: msma's GPU path in one command (docs/gpu.md).

Runs, each stage in its own process with its own time limit, continuing past a failed stage:

1. ``install``: the kit's wheels (``.device/wheels``, made by ``make device-kit``) into a scratch prefix, then a
   check that every requirement of every installed wheel is met by the prefix or by the interpreter.
2. ``env``: ``nvidia-smi``, the interpreter and library versions used.
3. ``build``: nvdiffrast's CUDA plugin with msma's own build (``msma.render.cuda_build``; sm_90 on an H200).
4. ``train_run``: a real training run of the authors' MSMA on the embedded default at 224 (synthetic faces
   generated on the device, nvdiffrast, bf16), its loss curve, then ``msma eval`` of its checkpoint on the device.
5. ``gpu_tests``: ``pytest -m gpu`` over the test files that hold gpu-marked tests (CPU: collection only).
6. ``render``: the renderer benchmark (nvdiffrast and torch backends, batch 32/128 at 224) and the
   torch-vs-nvdiffrast parity figures (coverage IoU, colour difference where both cover).
7. ``train_step``: the full training step of every encoder (fp32 and bf16, channels_last, batch 32/64/128) with
   its breakdown (encoder forward+backward, renderer forward+backward).

Everything is written under ``--out``: ``results/*.json`` (named ``<bench>-cuda-<gpu>...json``, ready to copy into
``benchmarks/results/``), ``summary.md``, ``check.json`` (stage status and times), per-stage logs, and a
``results.tgz`` of it all (one file to bring back).

    python3 scripts/device_check.py --out /tmp/dc --export "$OUT"           # on the GPU machine
    python scripts/device_check.py --out /tmp/smoke --device cpu --smoke   # CPU smoke mode (run by the tests)
    python3 scripts/device_check.py --out /tmp/dc --only build train_run \
        --train-variant fused0=optim.fused=true,seed=0 --train-variant plain0=optim.fused=false,seed=0  # A/B runs

The orchestrator uses the standard library only, so it starts on a bare interpreter; the stages import msma
from ``src/`` with the kit's prefix on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Stage:
    """One stage's outcome."""

    name: str
    status: str = "not run"  # "ok" | "failed" | "timeout" | "skipped" | "not run"
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    """What the check runs, per mode (full GPU check or CPU smoke)."""

    device: str
    smoke: bool
    render_batches: tuple[int, ...]
    render_size: int
    render_repeats: int
    step_experiments: tuple[str, ...]
    step_batches: tuple[int, ...]
    step_precisions: tuple[str, ...]
    step_size: int
    step_repeats: int
    run_experiment: str
    run_overrides: tuple[str, ...]
    eval_limit: int
    limits: dict[str, int]

    @staticmethod
    def for_mode(device: str, smoke: bool) -> Settings:
        if smoke:
            return Settings(
                device=device,
                smoke=True,
                render_batches=(2,),
                render_size=64,
                render_repeats=2,
                step_experiments=("deep3d_r50",),
                step_batches=(2,),
                step_precisions=("32",),
                step_size=64,
                step_repeats=1,
                run_experiment="quickstart",
                run_overrides=(
                    "trainer=cpu",
                    "renderer=torch",
                    "data.image_size=64",
                    "data.num_samples=32",
                    "data.val_samples=16",
                    "data.batch_size=8",
                    "data.num_workers=0",
                    "data.persistent_workers=false",
                    "trainer.max_epochs=1",
                    "trainer.max_steps=4",
                    "trainer.log_every_n=1",
                ),
                eval_limit=16,
                limits={
                    "install": 120,
                    "build": 60,
                    "gpu_tests": 120,
                    "render": 120,
                    "train_step": 240,
                    "train_run": 400,
                    "eval": 120,
                },
            )
        return Settings(
            device=device,
            smoke=False,
            render_batches=(32, 128),
            render_size=224,
            render_repeats=20,
            step_experiments=("msma_lka", "mlanet", "deep3d_r50", "msma_spatial"),
            step_batches=(32, 64, 128),
            step_precisions=("32", "bf16-mixed"),
            step_size=224,
            step_repeats=5,
            run_experiment="msma_lka",
            run_overrides=(
                "+preset=embedded",
                "trainer=gpu",
                "trainer.accelerator=gpu",
                "trainer.precision=bf16-mixed",
                "renderer=nvdiffrast",
                "data.image_size=224",
                # Generated on the GPU (the CPU torch renderer took 0.13 s a face on the H200 machine's CPU).
                "data.synthetic_renderer=nvdiffrast",
                "data.num_samples=768",
                "data.val_samples=64",
                "data.batch_size=32",
                "data.num_workers=8",
                "num_threads=8",
                # 24 steps an epoch, 6 epochs, one validation (and one pair of 1.2 GB checkpoints) at the end.
                "trainer.max_epochs=6",
                "trainer.max_steps=144",
                "trainer.check_val_every_n_epoch=6",
                "trainer.num_sanity_val_steps=0",
                "trainer.log_every_n=10",
                "trainer.grid_every_n=0",
                "optim.lr=2e-4",
                "optim.step_size=144",
                "optim.interval=step",
                "data.augment=false",
                "data.flip=false",
            ),
            eval_limit=64,
            limits={
                "install": 60,
                "build": 180,
                "gpu_tests": 120,
                "render": 60,
                "train_step": 270,
                "train_run": 240,
                "eval": 60,
            },
        )


class Check:
    """Runs the stages and records their outcome under ``out``."""

    def __init__(self, out: Path, kit: Path, settings: Settings, budget_s: float = 1e9) -> None:
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.out = out
        self.kit = kit
        self.s = settings
        self.results = out / "results"
        self.logs = out / "logs"
        self.prefix = out / "site" if settings.smoke else Path("/tmp/msma-device-site")
        self.home = out / "msma_home"
        self.stages: list[Stage] = []
        self.env = dict(os.environ)
        self.export: Path | None = None
        self.variants: list[tuple[str, tuple[str, ...]]] = []

    # -- helpers -------------------------------------------------------------------------------------------------
    def run(
        self, stage: Stage, cmd: list[str], limit: int, log_name: str | None = None
    ) -> subprocess.CompletedProcess[str] | None:
        """Runs ``cmd`` from the repository root with the check's environment.

        Its stderr streams into ``logs/<name>.log`` (so a stage cut short keeps what it printed); its stdout is
        returned and appended to the log. Returns None when the stage's time limit (or the check's budget) ran out.
        """
        log = self.logs / f"{log_name or stage.name}.log"
        limit = int(max(1, min(limit, self.deadline - time.perf_counter())))
        print(f"[{stage.name}] (limit {limit} s) $ {' '.join(cmd)}", flush=True)
        with log.open("w") as err:
            try:
                proc = subprocess.run(
                    cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=err, text=True, timeout=limit
                )
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                err.write(f"\n--- stdout ---\n{out}\n[timed out after {limit} s]\n")
                stage.status, stage.detail = "timeout", f"{' '.join(cmd[:4])}... timed out after {limit} s"
                print(f"[{stage.name}] timed out after {limit} s", flush=True)
                return None
            err.write("\n--- stdout ---\n" + proc.stdout)
        if proc.returncode != 0:
            stage.status = "failed"
            text = log.read_text(errors="replace")
            stage.detail = text.strip()[-1500:]
            print(f"[{stage.name}] failed ({proc.returncode}):\n{stage.detail[-800:]}", flush=True)
        return proc

    def stage(self, name: str) -> Stage:
        st = Stage(name)
        self.stages.append(st)
        return st

    def py(self) -> str:
        return sys.executable

    # -- stages --------------------------------------------------------------------------------------------------
    def stage_env(self) -> None:
        st = self.stage("env")
        t0 = time.perf_counter()
        info: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
        smi = shutil.which("nvidia-smi")
        if smi:
            q = subprocess.run(
                [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True,
                text=True,
            )
            info["nvidia_smi"] = q.stdout.strip()
            (self.logs / "nvidia-smi.txt").write_text(subprocess.run([smi], capture_output=True, text=True).stdout)
        probe = (
            "import json, importlib.metadata as md, torch\n"
            "v = {n: md.version(n) for n in ('torch','torchvision','lightning','timm','numpy','hydra-core',"
            "'albumentations','diffrp-nvdiffrast','scipy','scikit-image') if _ok(n)}\n"
            "v['cuda'] = torch.version.cuda; v['cuda_available'] = torch.cuda.is_available()\n"
            "v['gpu'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
            "print(json.dumps(v))\n"
        )
        probe = (
            "import importlib.metadata as md\ndef _ok(n):\n    try:\n        md.version(n); return True\n    except Exception:\n        return False\n"
            + probe
        )
        proc = self.run(st, [self.py(), "-c", probe], 120)
        if proc is not None and proc.returncode == 0:
            info["versions"] = json.loads(proc.stdout.strip().splitlines()[-1])
            st.status = "ok"
        st.data = info
        st.seconds = time.perf_counter() - t0

    def stage_install(self) -> None:
        """Installs the kit's wheels into a scratch prefix and checks that their requirements are met."""
        st = self.stage("install")
        t0 = time.perf_counter()
        wheels = sorted((self.kit / "wheels").glob("*.whl"))
        manifest_file = self.kit / "manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        kit_py = str(manifest.get("python_version", f"{sys.version_info.major}.{sys.version_info.minor}"))
        here_py = f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.rmtree(self.prefix, ignore_errors=True)
        self.prefix.mkdir(parents=True)
        if wheels:
            cmd = [
                self.py(),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--upgrade",
                "--target",
                str(self.prefix),
            ]
            if kit_py != here_py:  # CPU smoke mode on another interpreter: install for the kit's one
                cmd += ["--python-version", kit_py, "--only-binary=:all:", "--implementation", "cp"]
                cmd += [a for p in manifest.get("platforms", []) for a in ("--platform", p)]
            proc = self.run(st, cmd + [str(w) for w in wheels], self.s.limits["install"])
            if proc is None or proc.returncode != 0:
                st.seconds = time.perf_counter() - t0
                return
        # Every installed distribution's requirements must be met by the prefix or by this interpreter.
        checker = (
            "import sys, re, json, importlib.metadata as md\n"
            "from packaging.requirements import Requirement\n"
            "from packaging.version import Version\n"
            "norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()\n"
            "prefix = sys.argv[1]\n"
            "mine = {norm(d.metadata['Name']): d for d in md.distributions(path=[prefix])}\n"
            "here = {norm(d.metadata['Name']): d.version for d in md.distributions()}\n"
            "bad = []\n"
            "for name, d in mine.items():\n"
            "    for r in d.requires or []:\n"
            "        req = Requirement(r)\n"
            "        if req.marker is not None and not req.marker.evaluate({'extra': ''}):\n"
            "            continue\n"
            "        n = norm(req.name)\n"
            "        have = mine[n].version if n in mine else here.get(n)\n"
            "        if have is None or (req.specifier and not req.specifier.contains(Version(have), prereleases=True)):\n"
            "            bad.append(f'{name} needs {r} (have {have})')\n"
            "print(json.dumps({'installed': sorted(mine), 'unmet': bad}))\n"
        )
        proc = self.run(st, [self.py(), "-c", checker, str(self.prefix)], 120, "install-check")
        if proc is not None and proc.returncode == 0:
            report = json.loads(proc.stdout.strip().splitlines()[-1])
            st.data = {"wheels": len(wheels), "kit_python": kit_py, **report}
            if report["unmet"]:
                st.status, st.detail = "failed", "; ".join(report["unmet"])[:1500]
            else:
                st.status = "ok"
        # Stages import msma from src/ and the kit's packages. On another interpreter (smoke mode) the cp3xx
        # binaries cannot load; there the prefix is appended after this interpreter's own packages.
        paths = [str(ROOT / "src")]
        if kit_py == here_py:
            paths.append(str(self.prefix))
        self.env["PYTHONPATH"] = os.pathsep.join(
            paths + [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        if kit_py != here_py:
            site = self.prefix.parent / "append_prefix"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(f"import sys\nsys.path.append({str(self.prefix)!r})\n")
            self.env["PYTHONPATH"] += os.pathsep + str(site)
        # The converted face model travels in the kit; MSMA_HOME points at a scratch copy (build caches go there).
        # Without a kit (a CUDA machine set up with `make setup`) the user's own MSMA_HOME is used.
        kit_home = sorted((self.kit / "msma_home").glob("*"))
        if kit_home:
            self.home.mkdir(parents=True, exist_ok=True)
            for f in kit_home:
                if not (self.home / f.name).exists():
                    shutil.copy2(f, self.home / f.name)
            self.env["MSMA_HOME"] = str(self.home)
        else:
            self.home = Path(self.env.get("MSMA_HOME", Path.home() / ".cache" / "msma")).expanduser()
        self.env.update(
            {
                "WANDB_MODE": "disabled",
                "HF_HUB_OFFLINE": "1",
                "NO_ALBUMENTATIONS_UPDATE": "1",
                "MPLBACKEND": "Agg",
                "PYTHONUNBUFFERED": "1",
            }
        )
        st.seconds = time.perf_counter() - t0

    def stage_build(self) -> None:
        st = self.stage("build")
        if self.s.device != "cuda":
            st.status, st.detail = "skipped", "no CUDA device (the plugin build needs nvcc and a CUDA torch)"
            return
        self.env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        self.env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
        t0 = time.perf_counter()
        code = (
            "import time, json; t=time.perf_counter()\n"
            "from msma.render.cuda_build import load_nvdiffrast_plugin, build_directory\n"
            "m = load_nvdiffrast_plugin(verbose=True)\n"
            "print(json.dumps({'plugin': m.__name__, 'dir': str(build_directory()), 's': time.perf_counter()-t}))\n"
        )
        proc = self.run(st, [self.py(), "-c", code], self.s.limits["build"])
        if proc is not None and proc.returncode == 0:
            st.status, st.data = "ok", json.loads(proc.stdout.strip().splitlines()[-1])
        st.seconds = time.perf_counter() - t0

    def gpu_test_files(self) -> list[str]:
        files = []
        for path in sorted((ROOT / "tests").rglob("test_*.py")):
            if "mark.gpu" in path.read_text(errors="ignore"):
                files.append(str(path.relative_to(ROOT)))
        return files

    def stage_gpu_tests(self) -> None:
        st = self.stage("gpu_tests")
        t0 = time.perf_counter()
        files = self.gpu_test_files()
        junit = self.results / "gpu-tests-junit.xml"
        cmd = [
            self.py(),
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--continue-on-collection-errors",
            "--junitxml",
            str(junit),
            *files,
        ]
        if self.s.device != "cuda":
            cmd.insert(cmd.index("-q"), "--collect-only")
        proc = self.run(st, cmd, self.s.limits["gpu_tests"])
        if proc is not None:
            tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or [""]
            st.data = {"files": files, "summary": tail[0]}
            if proc.returncode == 0:
                st.status = "ok"
        st.seconds = time.perf_counter() - t0

    def stage_render(self) -> None:
        st = self.stage("render")
        t0 = time.perf_counter()
        backends = ["nvdiffrast", "torch"] if self.s.device == "cuda" else ["torch"]
        cmd = [
            self.py(),
            "benchmarks/render.py",
            "--device",
            self.s.device,
            "--size",
            str(self.s.render_size),
            "--repeats",
            str(self.s.render_repeats),
            "--backends",
            *backends,
            "--out",
            str(self.results),
            "--batches",
            *map(str, self.s.render_batches),
        ]
        if self.s.smoke:
            cmd += ["--note", "device_check CPU smoke mode (tiny sizes)"]
        proc = self.run(st, cmd, self.s.limits["render"])
        ok = proc is not None and proc.returncode == 0
        if self.s.device == "cuda":
            parity = self.run(
                st,
                [self.py(), "benchmarks/render_parity.py", "--out", str(self.results)],
                self.s.limits["render"],
                "render-parity",
            )
            ok = ok and parity is not None and parity.returncode == 0
            if parity is not None and parity.returncode == 0:
                st.data["parity"] = json.loads(parity.stdout.strip().splitlines()[-1])
        if ok:
            st.status = "ok"
        st.seconds = time.perf_counter() - t0

    def stage_train_step(self) -> None:
        st = self.stage("train_step")
        t0 = time.perf_counter()
        cmd = [
            self.py(),
            "benchmarks/train_step.py",
            "--device",
            self.s.device,
            "--size",
            str(self.s.step_size),
            "--repeats",
            str(self.s.step_repeats),
            "--warmup",
            "2" if not self.s.smoke else "1",
            "--experiments",
            *self.s.step_experiments,
            "--batches",
            *map(str, self.s.step_batches),
            "--precisions",
            *self.s.step_precisions,
            "--out-dir",
            str(self.results),
        ]
        if self.s.device == "cuda":
            cmd.append("--channels-last")
        else:
            cmd += ["--threads", "1"]
        proc = self.run(st, cmd, self.s.limits["train_step"])
        if proc is not None and proc.returncode == 0:
            st.status = "ok"
            st.data["table"] = proc.stdout.strip().splitlines()[-1]
        st.seconds = time.perf_counter() - t0

    def stage_train_run(self) -> None:
        """The training run, once per ``--train-variant`` (or once with the settings' overrides alone)."""
        for name, extra in self.variants or [("", ())]:
            if time.perf_counter() > self.deadline - 5:
                self.stage(f"train_run:{name}" if name else "train_run").status = "skipped"
                self.stages[-1].detail = "the check's budget was spent"
                continue
            self.train_run(name, extra)
            self.write_report(final=False)

    def train_run(self, variant: str, extra: tuple[str, ...]) -> None:
        """One training run (``variant`` names its stages, folder and files; ``extra``: its own overrides)."""
        suffix = f":{variant}" if variant else ""
        st = self.stage("train_run" + suffix)
        st.data["overrides"] = list(extra)
        t0 = time.perf_counter()
        run_root = self.out / "run" / variant if variant else self.out / "run"
        env_id = f"device-check-{variant}" if variant else "device-check"
        self.env["MSMA_RUN_ID"] = env_id
        overrides = [
            *self.s.run_overrides,
            *extra,
            "logger=csv",
            f"hydra.run.dir={run_root}",
            f"data.synthetic_cache_dir={self.home / 'synthetic'}",
        ]
        cmd = [self.py(), "-m", "msma.cli", "train", "--config-name", self.s.run_experiment, *overrides]
        proc = self.run(st, cmd, self.s.limits["train_run"])
        ckpts = sorted(run_root.rglob("last.ckpt"))
        curve = self.loss_curve(run_root)
        st.data.update(curve=curve, checkpoint=str(ckpts[0]) if ckpts else None)
        if proc is not None and proc.returncode == 0 and ckpts:
            first, last = _mean_head_tail(curve)
            st.data["loss_first"], st.data["loss_last"] = first, last
            fell = first is not None and last is not None and last < first
            # The smoke run's few steps only prove the path runs; the GPU run must also learn.
            st.status = "ok" if (fell or self.s.smoke) else "failed"
            if not fell:
                st.detail = f"training loss did not fall: first {first}, last {last}"
            metrics = sorted(run_root.rglob("metrics.json"))
            if metrics:
                st.data["metrics"] = json.loads(metrics[0].read_text())
        st.seconds = time.perf_counter() - t0
        ev = self.stage("eval" + suffix)
        if not ckpts:
            ev.status, ev.detail = "skipped", "no checkpoint from train_run"
            return
        t1 = time.perf_counter()
        report = self.results / (f"eval-synthetic-{variant}.json" if variant else "eval-synthetic.json")
        proc = self.run(
            ev,
            [
                self.py(),
                "-m",
                "msma.cli",
                "eval",
                "--ckpt",
                str(ckpts[0]),
                "--data",
                "synthetic",
                "--device",
                self.s.device,
                "--limit",
                str(self.s.eval_limit),
                "--out",
                str(report),
            ],
            self.s.limits["eval"],
        )
        if proc is not None and proc.returncode == 0 and report.is_file():
            ev.status, ev.data = "ok", json.loads(report.read_text())
        ev.seconds = time.perf_counter() - t1

    @staticmethod
    def loss_curve(run_root: Path) -> list[tuple[int, float]]:
        """(step, train loss) pairs from the run's CSV log."""
        import csv

        curve: list[tuple[int, float]] = []
        for path in sorted(run_root.rglob("metrics.csv")):
            with path.open() as fh:
                for row in csv.DictReader(fh):
                    key = next((k for k in ("train/loss", "train/total", "train/loss_step") if row.get(k)), None)
                    if key and row.get("step"):
                        curve.append((int(float(row["step"])), float(row[key])))
        return curve

    # -- report --------------------------------------------------------------------------------------------------
    def write_report(self, final: bool = True) -> int:
        total = time.perf_counter() - self.started
        env = next((s.data for s in self.stages if s.name == "env"), {})
        check = {
            "device": self.s.device,
            "smoke": self.s.smoke,
            "seconds": round(total, 1),
            "env": env,
            "stages": [asdict(s) for s in self.stages],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (self.out / "check.json").write_text(json.dumps(check, indent=2, default=str))
        lines = [
            f"# msma device check ({'CPU smoke mode' if self.s.smoke else self.s.device})",
            "",
            f"Date {check['date']}; {env.get('nvidia_smi') or env.get('versions', {}).get('gpu') or 'no GPU'}; "
            f"versions: {json.dumps(env.get('versions', {}))}; total {total:.0f} s.",
            "",
            "| stage | status | s | detail |",
            "|---|---|---|---|",
        ]
        for s in self.stages:
            detail = s.detail.replace("\n", " ").replace("|", "/")[:300]
            lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {detail} |")
        for md_file in sorted(self.results.glob("*.md")):
            lines += ["", f"## {md_file.stem}", "", md_file.read_text().strip()]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")
        if final:
            print("\n".join(lines))
        with tarfile.open(self.out / "results.tgz", "w:gz") as tar:
            for name in ("results", "logs", "check.json", "summary.md"):
                if (self.out / name).exists():
                    tar.add(self.out / name, arcname=name)
            for csv_file in (self.out / "run").rglob("metrics.csv") if (self.out / "run").exists() else []:
                tar.add(csv_file, arcname=f"run/{csv_file.relative_to(self.out / 'run')}")
        if self.export is not None:
            self.export.mkdir(parents=True, exist_ok=True)
            for name in ("summary.md", "check.json", "results.tgz"):
                shutil.copy2(self.out / name, self.export / name)
        failed = [s.name for s in self.stages if s.status in ("failed", "timeout")]
        return 1 if failed else 0


def _mean_head_tail(curve: list[tuple[int, float]], n: int = 3) -> tuple[float | None, float | None]:
    if len(curve) < 2:
        return None, None
    k = max(1, min(n, len(curve) // 2))
    head = [v for _, v in curve[:k]]
    tail = [v for _, v in curve[-k:]]
    return sum(head) / len(head), sum(tail) / len(tail)


def _parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """``"NAME=key=value,key=value"`` -> (NAME, overrides); NAME is a plain word (it names a folder)."""
    name, sep, rest = text.partition("=")
    if not sep or not name.replace("_", "").replace("-", "").isalnum():
        raise SystemExit(f"--train-variant {text!r}: expected NAME=OVERRIDE[,OVERRIDE...] with a plain-word NAME")
    overrides = tuple(o for o in rest.split(",") if o)
    if not overrides or any("=" not in o for o in overrides):
        raise SystemExit(f"--train-variant {text!r}: every override must be key=value")
    return name, overrides


# The GPU training run comes before the long benchmark table, so a check cut short has verified training first.
STAGES = ("env", "install", "build", "train_run", "gpu_tests", "render", "train_step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="output folder (created)")
    ap.add_argument("--kit", type=Path, default=ROOT / ".device", help="the kit from `make device-kit`")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the tests' CPU smoke mode)")
    ap.add_argument("--only", nargs="*", choices=STAGES, help="run only these stages (env and install always run)")
    ap.add_argument(
        "--export",
        type=Path,
        default=None,
        help="also copy summary.md, check.json and results.tgz here after every stage (e.g. $OUT)",
    )
    ap.add_argument(
        "--budget", type=float, default=480.0, help="seconds for the whole check; stages past it are skipped"
    )
    ap.add_argument(
        "--train-variant",
        action="append",
        default=[],
        metavar="NAME=OVERRIDE[,OVERRIDE...]",
        help="run train_run (and its eval) once per variant, adding its overrides (e.g. fused0=optim.fused=true,seed=0)",
    )
    args = ap.parse_args(argv)
    variants = [_parse_variant(v) for v in args.train_variant]
    if len({name for name, _ in variants}) != len(variants):
        ap.error("--train-variant names must differ")
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out.resolve(), args.kit.resolve(), Settings.for_mode(args.device, args.smoke), args.budget)
    check.export = args.export
    check.variants = variants
    check.results.mkdir(exist_ok=True)
    check.logs.mkdir(exist_ok=True)
    wanted = set(args.only or STAGES) | {"env", "install"}
    check.stage_install()  # first: the env probe reads the installed versions
    check.stage_env()
    for name in STAGES[2:]:
        if name not in wanted:
            continue
        if time.perf_counter() > check.deadline - 5:
            check.stage(name).status = "skipped"
            check.stages[-1].detail = f"the check's budget ({args.budget:.0f} s) was spent"
            continue
        getattr(check, f"stage_{name}")()
        check.write_report(final=False)  # after every stage: a check cut short still leaves its results
    return check.write_report()


if __name__ == "__main__":
    sys.exit(main())
