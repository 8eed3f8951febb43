"""The report of ``msma eval``: its table, its default file name, JSON conversion."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from msma.metrics.nme import YAW_BIN_NAMES
from msma.utils.files import NAME_MAX_BYTES, shorten_name


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


#: Scan benchmarks: skipped images listed in the table (all of them are in the JSON report).
SKIPPED_SHOWN = 10


def _scan_item_name(image: str) -> str:
    """``<subject>/<image>`` of a scan benchmark's image path (a subject folder: its name)."""
    p = Path(image)
    return f"{p.parent.parent.name}/{p.name}" if p.parent.name == "images" else p.name


def format_table(data: str, result: dict[str, Any]) -> str:
    """A plain-text table of the headline numbers of one evaluation."""
    rows: list[tuple[str, str]] = []
    if data == "aflw2000_3d":
        for name, v, n in zip(YAW_BIN_NAMES, result["bins"], result["counts"]):
            rows.append((f"NME 2D |yaw| {name} (%)", f"{_fmt(v)}  (n={n})"))
        rows += [
            ("NME 2D balanced mean (%)", _fmt(result["balanced"])),
            *(
                [("NME 2D mean over the yaw bins present (%)", _fmt(result["balanced_present"]))]
                if result["balanced"] != result["balanced"] and "balanced_present" in result
                else []
            ),
            ("NME 2D mean over images (%)", _fmt(result["mean"])),
            ("NME 3D balanced mean (%)", _fmt(result["balanced_3d"])),
            ("NME 3D mean over images (%)", _fmt(result["mean_3d"])),
            ("crop", result["protocol"]["crop"]),
            ("photos skipped", str(len(result.get("skipped", [])))),
        ]
        rows += [(f"  skipped {Path(r['image']).name}", r["skipped"]) for r in result.get("skipped", [])]
    elif data == "photos":
        for r in result["images"]:
            name = Path(r["image"]).name
            if "nme" in r:
                rows.append((f"NME {name} (%)", f"{_fmt(r['nme'])}  vs mean face {_fmt(r['nme_mean_face'])}"))
            else:
                rows.append((f"NME {name} (%)", f"skipped ({r['skipped']})"))
        rows += [
            ("NME mean over photos (%)", f"{_fmt(result['mean'])}  vs mean face {_fmt(result['mean_mean_face'])}"),
            ("ratio to the mean face", _fmt(result["ratio"])),
            ("photos better than the mean face", f"{result['better_than_mean_face']} / {result['count']}"),
            ("photos skipped", str(len(result["skipped"]))),
        ]
        bins = result.get("yaw_bins") or {}
        ck, mf = bins.get("checkpoint"), bins.get("mean_face")
        if ck and mf and ck["balanced"] is not None:
            for name in ck["bins"]:
                rows.append(
                    (
                        f"NME |yaw| {name} (%)",
                        f"{_fmt(ck['bins'][name])}  vs mean face {_fmt(mf['bins'][name])}  (n={ck['counts'][name]})",
                    )
                )
            label = "balanced" if ck["all_bins_present"] else "mean over the yaw bins present"
            rows.append((f"NME {label} (%)", f"{_fmt(ck['balanced'])}  vs mean face {_fmt(mf['balanced'])}"))
    elif data == "synthetic":
        rows += [
            ("landmark NME 2D (%) [nme x 100]", _fmt(100.0 * result["nme"])),
            ("vertex_posed_mm (as posed)", _fmt(result["vertex_posed_mm"])),
            ("vertex_aligned_mm (rigidly aligned)", _fmt(result["vertex_aligned_mm"])),
            ("yaw error (deg)", _fmt(result["yaw_deg"])),
            ("pose angle error (deg)", _fmt(result["angles_deg"])),
            ("translation error (mm)", _fmt(result["trans_mm"])),
            ("id / exp / tex coeff RMSE", " / ".join(_fmt(result[k]) for k in ("id_rmse", "exp_rmse", "tex_rmse"))),
        ]
    else:
        rows += [
            ("RMSE (mm)", f"{_fmt(result['rmse_mm'])} +- {_fmt(result['rmse_std_mm'])}"),
            ("scan-to-mesh median (mm)", _fmt(result["scan_to_mesh_median_mm"])),
            ("scan-to-mesh mean (mm)", _fmt(result["scan_to_mesh_mean_mm"])),
            ("scan-to-mesh std (mm)", _fmt(result["scan_to_mesh_std_mm"])),
            ("skipped images", str(len(result["skipped"]))),
        ]
        shown = result["skipped"][:SKIPPED_SHOWN]
        rows += [(f"  skipped {_scan_item_name(r['image'])}", r["reason"]) for r in shown]
        if len(result["skipped"]) > len(shown):
            rows.append(("  ...", f"{len(result['skipped']) - len(shown)} more in the JSON report"))
    rows.append(("samples", str(result["count"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def default_output(ckpt: str, data: str, crop: str | None) -> Path:
    """``<ckpt folder>/eval_<ckpt stem>_<data>[_<crop>].json``; for ``mean``: ``./eval_mean_<data>...json``.

    A checkpoint stem too long for the name to fit the file system's limit is shortened
    (:func:`~msma.utils.files.shorten_name`): the report is written after the whole evaluation."""
    suffix = f"_{crop}" if crop else ""
    if ckpt == "mean":
        return Path(f"eval_mean_{data}{suffix}.json")
    p = Path(ckpt)
    tail = f"_{data}{suffix}.json"
    return p.parent / f"eval_{shorten_name(p.stem, NAME_MAX_BYTES - len(tail) - len('eval_'))}{tail}"


def json_default(x: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars, tuples and paths."""
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (tuple, Path)):
        return list(x) if isinstance(x, tuple) else str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")
