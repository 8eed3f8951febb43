"""``msma reconstruct``: per face an OBJ, the coefficients as JSON and an overlay PNG (a thin command over
:class:`msma.inference.Reconstructor` and :func:`msma.reconstruction.save_reconstruction`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from msma.inference import Reconstructor
from msma.reconstruction import save_reconstruction
from msma.utils.files import NAME_MAX_BYTES, shorten_name
from msma.utils.progress import progress_bar

MAX_STEM_BYTES = NAME_MAX_BYTES - 55
"""The longest output stem (UTF-8 bytes): room within the file system's name limit for what is appended to it
(``_2`` for a repeated name, ``_face12`` with ``--all-faces``, ``_overlay.png`` / ``_texture.png``)."""


def _collect_inputs(paths: Sequence[str], out_dir: Path | None = None) -> tuple[list[Path], list[tuple[str, str]]]:
    """The photos to reconstruct and the inputs skipped with their reasons.

    A folder is searched recursively, except ``out_dir`` when it lies inside it: a rerun of ``msma reconstruct
    photos/ --out photos/recon`` must not reconstruct its own overlays (photos named explicitly are always taken).
    """
    from msma.data.io import REASON_UNSUPPORTED, list_images, unsupported_format

    own = out_dir.resolve() if out_dir is not None else None
    files: list[Path] = []
    missing: list[tuple[str, str]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = []
            for f in list_images(path, unsupported=True):  # named as skipped, kept out of the output names
                if own is not None and f.resolve().is_relative_to(own):
                    continue
                why = unsupported_format(f)
                if why is None:
                    found.append(f)
                else:
                    missing.append((str(f), f"{REASON_UNSUPPORTED}: {why}"))
            if not found:
                missing.append((str(path), "empty: no image files in this folder"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            missing.append((str(path), "missing: no such file or folder"))
    return files, missing


def _safe_stem(stem: str) -> str:
    """An output name from a file's stem: whitespace, control characters and path separators become ``_`` (an OBJ's
    ``mtllib`` line cannot hold a space; a newline in a name breaks every line-based tool), and a stem longer than
    :data:`MAX_STEM_BYTES` is shortened (:func:`~msma.utils.files.shorten_name`): a photo's name may use the whole
    255-byte limit, its outputs' names add to it."""
    out = "".join("_" if ch.isspace() or unicodedata.category(ch).startswith("C") or ch in "/\\" else ch for ch in stem)
    return shorten_name(out, MAX_STEM_BYTES) if out else "image"


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """One output name per input file, never shared: repeated names get ``_1``, ``_2``, ... skipping every name
    another input already has (``a/t.jpg``, ``b/t.jpg`` and ``t_1.jpg`` give ``t_2``, ``t_3`` and ``t_1``), so no
    reconstruction overwrites another's files."""
    clean = [_safe_stem(f.stem) for f in files]
    counts = Counter(clean)
    taken = set(counts)
    seen: Counter[str] = Counter()
    stems = []
    for stem in clean:
        if counts[stem] == 1:
            stems.append(stem)
            continue
        while True:
            seen[stem] += 1
            candidate = f"{stem}_{seen[stem]}"
            if candidate not in taken:
                break
        taken.add(candidate)
        stems.append(candidate)
    return stems


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msma reconstruct",
        description="Reconstruct 3D faces from photos: per face an OBJ, the coefficients as JSON and an overlay PNG.",
    )
    p.add_argument("paths", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--ckpt", default="mean", help="checkpoint from 'msma train', or 'mean' (untrained: mean face)")
    p.add_argument("--out", default="reconstructions", help="output folder (default: ./reconstructions)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=8, help="images (and faces) per network batch")
    p.add_argument("--all-faces", action="store_true", help="every detected face, not only the largest")
    p.add_argument(
        "--detector",
        default=None,
        help="face detector: dlib, opencv, dlib+opencv or mediapipe (default: mediapipe "
        "with --landmarks mediapipe, else dlib)",
    )
    p.add_argument(
        "--landmarks", default=None, help="landmark backend: dlib, fan or mediapipe (default: mediapipe with --fit)"
    )
    p.add_argument("--fit", action="store_true", help="refine by 3DMM fitting to MediaPipe's dense landmarks")
    p.add_argument("--texture", action="store_true", help="OBJ + MTL + PNG texture in the face model's UV space (ICT)")
    p.add_argument("--landmark-weights", default=None, help="model file of the landmark backend")
    p.add_argument("--renderer", default="auto", help="renderer backend: auto, torch or nvdiffrast")
    p.add_argument(
        "--no-fallback",
        action="store_true",
        help="do not retry MediaPipe's detection chain where dlib / OpenCV find no face (profiles)",
    )
    p.add_argument(
        "--no-flip-average",
        action="store_true",
        help="the network's coefficients from the crop alone (default: averaged with its mirror image's, two passes)",
    )
    p.add_argument(
        "--no-clamp-expressions",
        action="store_true",
        help="the network's blendshape weights as it outputs them (default: clamped to the model's [0, 1])",
    )
    p.add_argument(
        "--recrop",
        type=int,
        default=1,
        help="faces found as a box only (extreme profiles, --landmarks mediapipe): passes re-cropped on the "
        "network's own predicted landmarks (default 1; 0: the box crop alone)",
    )
    return p


def cli_main(argv: list[str]) -> int:
    """``msma reconstruct``; returns 0 when at least one face was reconstructed, 1 otherwise, 2 on bad usage."""
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        print("msma reconstruct: --batch-size must be >= 1", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out_dir = Path(args.out)
    try:  # before any work: an output path that is a file, or a folder that cannot be made
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"msma reconstruct: --out {out_dir}: cannot use it as the output folder ({exc})", file=sys.stderr)
        return 2
    files, skipped = _collect_inputs(args.paths, out_dir)
    try:
        rec = Reconstructor(
            None if args.ckpt == "mean" else args.ckpt,
            device=args.device,
            detector=args.detector,
            landmarks=args.landmarks or ("mediapipe" if args.fit else "dlib"),
            landmark_weights=args.landmark_weights,
            renderer_backend=args.renderer,
            fit=args.fit,
            texture=args.texture,
            fallback=not args.no_fallback,
            flip_average=not args.no_flip_average,
            clamp_expressions=not args.no_clamp_expressions,
            recrop=args.recrop,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"msma reconstruct: {exc}", file=sys.stderr)
        return 2
    stems = _unique_stems(files)
    written = 0
    faces = 0
    images_ok = 0
    t0 = time.perf_counter()
    bar = progress_bar(total=len(files), desc="reconstruct", unit="img")
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        results = rec.reconstruct_many([str(f) for f in chunk], all_faces=args.all_faces, batch_size=args.batch_size)
        for f, stem, res in zip(chunk, stems[start : start + args.batch_size], results):
            if isinstance(res, str):
                skipped.append((str(f), res))
                continue
            try:  # a photo whose outputs cannot be written is named and counted; the others go on
                for r in res:
                    name = stem if not args.all_faces else f"{stem}_face{r.face_index}"
                    written += len(save_reconstruction(r, out_dir, name))
                    faces += 1
            except OSError as exc:
                skipped.append((str(f), f"write_failed: {exc}"))
                continue
            images_ok += 1
        bar.update(len(chunk))
    bar.close()
    dt = time.perf_counter() - t0
    print(
        f"msma reconstruct: {faces} face(s) from {images_ok}"
        f" of {len(files)} image(s) in {dt:.1f} s ({args.ckpt}, {rec.device}); {written} files in {out_dir}"
    )
    if skipped:
        print(f"skipped {len(skipped)} input(s):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    return 0 if faces > 0 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
