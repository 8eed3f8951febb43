"""Face model cost on the CPU: vertex normals as gathers / index_add (the definition) against the sparse products
``FaceModel`` uses (``msma.face_model.normals.MeshNormals``), alone, inside the face model, and in a full training
step of the quickstart's recipe.

    python benchmarks/face_model_speed.py                 # ICT, batch 16 at 64 px (the quickstart's step)
    python benchmarks/face_model_speed.py --batch 32 --rounds 3

Every figure is forward + backward (an Adam update too for the training step), the median of ``--rounds``
interleaved rounds of ``--repeats`` timed calls, both forms in the same process so that load drifts hit them alike.
The training step is ``FaceReconModule.compute_loss`` + backward + Adam on one batch of synthetic faces:
``msma_spatial`` (ResNet-18, channels 48/96/192), the MSMA loss with coefficient supervision, the torch renderer.
Writes ``benchmarks/results/face_model_speed-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_slug, header, markdown_table, median, time_call, write_json


def _parts(batch: int, size: int) -> dict[str, Any]:
    from msma.builders import build_face_model, build_loss, build_renderer
    from msma.config import OptimConfig
    from msma.data.batch import collate_samples
    from msma.data.synthetic import SyntheticFaceDataset
    from msma.losses.config import LossConfig
    from msma.models import build_encoder
    from msma.training.module import FaceReconModule

    fm = build_face_model("ict")
    renderer = build_renderer("torch")
    ds = SyntheticFaceDataset(
        fm, num_samples=batch, seed=5, image_size=size, cache_dir=None, renderer_backend="torch", progress=False
    )
    faces = collate_samples([ds[i] for i in range(batch)])
    torch.manual_seed(0)
    enc = build_encoder("msma_spatial", fm.layout, backbone="resnet18", pretrained=False, channels=[48, 96, 192])
    loss = build_loss(LossConfig(w_param=1.0, param_w_angles=10.0, param_w_trans=0.01))
    module = FaceReconModule(
        encoder=enc, face_model=fm, renderer=renderer, loss=loss, optim=OptimConfig(lr=1e-3), config={"name": "bench"}
    )
    return {"face_model": fm, "batch": faces, "module": module, "optimizer": module.configure_optimizers()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")

    from msma.face_model.normals import mesh_vertex_normals

    parts = _parts(args.batch, args.size)
    fm, batch, module = parts["face_model"], parts["batch"], parts["module"]
    opt = parts["optimizer"]
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    params = module.encoder(batch.image).detach()
    verts = fm.shape(params.id, params.exp).detach()
    sparse = fm.vertex_normals
    forms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "definition (gather + index_add)": lambda v: mesh_vertex_normals(v, fm.mesh_tri),
        "sparse products (FaceModel)": sparse,
    }

    def normals_step(form: Callable[[torch.Tensor], torch.Tensor]) -> None:
        x = verts.clone().requires_grad_()
        form(x).sum().backward()

    def face_model_step() -> None:
        p = params.replace(**{g: t.clone().requires_grad_() for g, t in params.items()})
        out = fm(p, image_size=args.size)
        (out.vertices.sum() + out.color.sum() + out.landmarks_2d.sum()).backward()

    def train_step() -> None:
        loss, _ = module.compute_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()

    # Every stage calls fm.vertex_normals, which the loop below sets to each form in turn.
    stages: dict[str, Callable[[], None]] = {"normals": lambda: normals_step(fm.vertex_normals)}
    stages["face model"] = face_model_step
    stages["training step"] = train_step
    times: dict[tuple[str, str], list[float]] = {(s, f): [] for s in stages for f in forms}
    for _ in range(args.rounds):
        for form_name, form in forms.items():
            fm.vertex_normals = form  # type: ignore[method-assign]
            for stage, fn in stages.items():
                times[(stage, form_name)] += time_call(fn, device, args.repeats, warmup=1)
    fm.vertex_normals = sparse  # type: ignore[method-assign]

    rows, records = [], []
    ref_name, new_name = list(forms)
    for stage in stages:
        ref, new = median(times[(stage, ref_name)]), median(times[(stage, new_name)])
        rows.append([stage, f"{ref * 1e3:.1f}", f"{new * 1e3:.1f}", f"{new / ref:.3f}"])
        records.append({"stage": stage, "definition_ms": ref * 1e3, "sparse_ms": new * 1e3, "ratio": new / ref})
    table = markdown_table(["forward + backward", "definition ms", "sparse ms", "ratio"], rows)
    print(
        f"ICT face model ({fm.n_vertices} vertices, {int(fm.mesh_tri.shape[0])} triangles), batch {args.batch} at "
        f"{args.size} px, {args.threads} threads, median of {args.rounds} x {args.repeats}"
    )
    print(table)
    payload = header(device, "face_model_speed", vars(args) | {"out": str(args.out) if args.out else None})
    payload["rows"] = records
    path = write_json(f"face_model_speed-{device_slug(device)}", payload) if args.out is None else None
    if args.out is not None:
        write_json(args.out.stem, payload, args.out.parent)
        path = args.out
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
