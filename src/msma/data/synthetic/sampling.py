"""Random face coefficients: identity, expression, albedo, head pose, SH light and placement (docs/synthetic.md).

Sample ``index`` of a dataset seeded with ``seed`` draws from its own generator, seeded by :func:`sample_seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msma.data.synthetic.prototypes import EXPRESSION_PROTOTYPES, UNILATERAL_PROTOTYPES
from msma.face_model.model import FaceModel
from msma.face_model.params import FaceParams
from msma.face_model.shading import SH_A, SH_DC_OFFSET, sh_basis

#: Bumped whenever the generator's output for the same settings changes (part of the cache key and the seeds).
#: 3: domain randomisation (head mesh, hair, clothing, occluders, light, camera, clutter); 4: aligner framing;
#: 5: pitch centred on the pose photos show faces in (``pitch_mean_deg``), ICT jaw landmarks re-selected.
SYNTHETIC_VERSION = 5

# Expression semantics for blendshape models with ARKit names (ICT-FaceKit): pairs that cannot both be active,
# and the gaze shapes that are driven together (conjugate eye movement) instead of independently.
_EXCLUSIVE_BASES: tuple[tuple[str, str], ...] = (
    ("jawLeft", "jawRight"),
    ("mouthLeft", "mouthRight"),
    ("eyeBlink", "eyeWide"),
    ("mouthSmile", "mouthFrown"),
    ("mouthPucker", "mouthStretch"),
)
_GAZE_BASES = ("eyeLookIn", "eyeLookOut", "eyeLookUp", "eyeLookDown")


@dataclass(frozen=True)
class SamplingSettings:
    """The distributions :func:`sample_params` draws from (see its docstring for the meaning of each).

    A frozen record of the keyword arguments of :func:`sample_params`, kept by the dataset for its cache key.
    """

    max_yaw_deg: float = 60.0
    extreme_yaw_fraction: float = 0.1
    extreme_yaw_limit_deg: float = 90.0
    pitch_std_deg: float = 10.0
    max_pitch_deg: float = 30.0
    roll_std_deg: float = 6.0
    max_roll_deg: float = 20.0
    id_scale: float = 1.0
    exp_scale: float = 1.0
    tex_scale: float = 1.0
    neutral_fraction: float = 0.1
    max_active_expressions: int = 5
    light_strength: float = 1.0
    shift_std_mm: float = 8.0
    max_shift_mm: float = 20.0
    depth_range_mm: float = 80.0
    skin_tone_mixture: bool = True
    pitch_mean_deg: float = 0.0
    expression_prototypes: float = 0.0
    skin_creases: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_yaw_deg <= self.extreme_yaw_limit_deg <= 90.0:
            raise ValueError(
                f"need 0 <= max_yaw_deg ({self.max_yaw_deg}) <= extreme_yaw_limit_deg "
                f"({self.extreme_yaw_limit_deg}) <= 90"
            )
        if not 0.0 <= self.extreme_yaw_fraction <= 1.0 or not 0.0 <= self.neutral_fraction <= 1.0:
            raise ValueError("extreme_yaw_fraction and neutral_fraction must lie in [0, 1]")
        if not 0.0 <= self.expression_prototypes <= 1.0:
            raise ValueError(f"expression_prototypes must lie in [0, 1], got {self.expression_prototypes}")
        if not 0.0 <= self.skin_creases <= 1.0:
            raise ValueError(f"skin_creases must lie in [0, 1], got {self.skin_creases}")
        for name in ("pitch_std_deg", "max_pitch_deg", "roll_std_deg", "max_roll_deg", "id_scale", "exp_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("tex_scale", "light_strength", "shift_std_mm", "max_shift_mm", "depth_range_mm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.depth_range_mm >= 400.0:
            raise ValueError(
                f"depth_range_mm must stay well inside the camera's 500 mm near plane, got {self.depth_range_mm}"
            )
        if self.max_active_expressions < 1:
            raise ValueError(f"max_active_expressions must be >= 1, got {self.max_active_expressions}")


def _uniform(gen: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _truncated_normal(gen: torch.Generator, n: int, std: float, limit: float) -> Tensor:
    """``N(0, std)`` resampled until inside ``[-limit, limit]`` (a fixed number of draws: deterministic)."""
    out = torch.randn(n, generator=gen, dtype=torch.float64) * std
    for _ in range(8):
        bad = out.abs() > limit
        redraw = torch.randn(n, generator=gen, dtype=torch.float64) * std
        out = torch.where(bad, redraw, out)
    return out.clamp(-limit, limit)


def sample_pose(gen: torch.Generator, batch: int, settings: SamplingSettings) -> Tensor:
    """Head pose: (B, 3) pitch, yaw, roll in radians (float64).

    Yaw is uniform in ``[-max_yaw, max_yaw]`` except for a fraction ``extreme_yaw_fraction`` of the samples whose
    ``|yaw|`` is uniform in ``(max_yaw, extreme_yaw_limit]`` with a random sign; pitch is ``pitch_mean`` plus a
    zero-mean normal truncated at ``max_pitch``, roll a zero-mean normal truncated at ``max_roll``.
    """
    s = settings
    extreme = torch.rand(batch, generator=gen, dtype=torch.float64) < s.extreme_yaw_fraction
    yaw_normal = _uniform(gen, batch, -s.max_yaw_deg, s.max_yaw_deg)
    sign = torch.where(torch.rand(batch, generator=gen, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
    yaw_extreme = sign * _uniform(gen, batch, s.max_yaw_deg, s.extreme_yaw_limit_deg)
    yaw = torch.where(extreme, yaw_extreme, yaw_normal)
    pitch = s.pitch_mean_deg + _truncated_normal(gen, batch, s.pitch_std_deg, s.max_pitch_deg)
    roll = _truncated_normal(gen, batch, s.roll_std_deg, s.max_roll_deg)
    return torch.deg2rad(torch.stack([pitch, yaw, roll], dim=1))


def _expression_structure(names: tuple[str, ...]) -> tuple[dict[str, list[int]], dict[str, tuple[int, int]]] | None:
    """Groups ARKit-style names into ``base -> [indices]`` (``_L``/``_R`` sides together) and the gaze shapes.

    Returns None when the names are not ARKit-like (no ``_L``/``_R`` pairs), in which case the generic sparse
    sampler is used.
    """
    bases: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        base = name[:-2] if name.endswith(("_L", "_R")) else name
        bases.setdefault(base, []).append(i)
    if not any(len(v) == 2 for v in bases.values()):
        return None
    gaze: dict[str, tuple[int, int]] = {}
    for g in _GAZE_BASES:
        if g in bases and len(bases[g]) == 2:
            left = next(i for i in bases[g] if names[i].endswith("_L"))
            right = next(i for i in bases[g] if names[i].endswith("_R"))
            gaze[g] = (left, right)
            del bases[g]
    return bases, gaze


def _set_prototype(gen: torch.Generator, w: Tensor, bases: dict[str, list[int]], pick: float, side: float) -> None:
    """Writes one of :data:`EXPRESSION_PROTOTYPES` into ``w`` (in place), at a random intensity.

    The prototype is ``pick`` in [0, 1) scaled to the table's rows; its intensity is uniform in [0.35, 1] (a mild to a
    full expression), each shape and side jittered by a factor uniform in [0.8, 1.2] (faces are not symmetric);
    ``side`` < 0.5 picks the first listed side (``_L`` on ICT) of a one-sided prototype. Shapes the model does not
    have are left out.
    """
    names = sorted(EXPRESSION_PROTOTYPES)
    name = names[min(int(pick * len(names)), len(names) - 1)]
    intensity = float(_uniform(gen, 1, 0.35, 1.0))
    shapes = EXPRESSION_PROTOTYPES[name]
    factors = _uniform(gen, 2 * len(shapes), 0.8, 1.2)
    for k, (base, weight) in enumerate(sorted(shapes.items())):
        sides = bases.get(base)
        if sides is None:
            continue
        if name in UNILATERAL_PROTOTYPES and len(sides) == 2:
            sides = [sides[0] if side < 0.5 else sides[1]]
        for j, idx in enumerate(sides):
            w[idx] = min(1.0, weight * intensity * float(factors[2 * k + j]))


def _sample_blendshapes(gen: torch.Generator, names: tuple[str, ...], settings: SamplingSettings) -> Tensor:
    """One sparse ARKit-style weight vector (n_exp,) in [0, 1] (float64)."""
    n = len(names)
    w = torch.zeros(n, dtype=torch.float64)
    structure = _expression_structure(names)
    r = torch.rand(8, generator=gen, dtype=torch.float64)  # fixed number of draws for the top-level choices
    neutral = bool(r[0] < settings.neutral_fraction)
    k = 1 + int(torch.randint(0, settings.max_active_expressions, (1,), generator=gen))
    if structure is None:
        idx = torch.randperm(n, generator=gen)[:k]
        vals = _uniform(gen, k, 0.1, 1.0)
        if not neutral:
            w[idx] = vals
        return (w * settings.exp_scale).clamp(0.0, 1.0)

    bases, gaze = structure
    order = list(bases)
    perm = torch.randperm(len(order), generator=gen).tolist()
    vals = _uniform(gen, len(order), 0.15, 1.0) ** 0.8
    sym = torch.rand(len(order), generator=gen, dtype=torch.float64) < 0.7
    jitter = _uniform(gen, 2 * len(order), -0.15, 0.15)
    side_pick = torch.rand(len(order), generator=gen, dtype=torch.float64)
    # A fraction of the expressive samples takes a prototypical expression instead of a random combination (the
    # draws above are made either way, and the prototype's own only when chosen: with expression_prototypes = 0
    # every sample is the one the generator made before the setting existed).
    prototype = not neutral and bool(r[3] < settings.expression_prototypes)
    if prototype:
        _set_prototype(gen, w, bases, float(r[4]), float(r[5]))
    elif not neutral:
        chosen: list[str] = []
        for p in perm:
            if len(chosen) >= k:
                break
            base = order[p]
            if any((base == a and b in chosen) or (base == b and a in chosen) for a, b in _EXCLUSIVE_BASES):
                continue
            chosen.append(base)
            sides = bases[base]
            v = float(vals[p])
            if len(sides) == 1:
                w[sides[0]] = v
            elif bool(sym[p]):  # both sides, nearly equal
                w[sides[0]] = v + float(jitter[2 * p])
                w[sides[1]] = v + float(jitter[2 * p + 1])
            else:  # one side dominant
                main = 0 if float(side_pick[p]) < 0.5 else 1
                w[sides[main]] = v
                w[sides[1 - main]] = v * float(side_pick[p]) * 0.5
        # mouthClose closes the lips *against* an open jaw; alone it pushes them through each other.
        if "mouthClose" in bases and "jawOpen" in bases:
            jaw, close = bases["jawOpen"][0], bases["mouthClose"][0]
            w[close] = torch.minimum(w[close], w[jaw])
    # Gaze: both eyes turn the same way (eyeLookOut_L with eyeLookIn_R, eyeLookUp_L with eyeLookUp_R).
    horizontal = float(_uniform(gen, 1, -0.6, 0.6)) if bool(r[1] < 0.6) else 0.0
    vertical = float(_uniform(gen, 1, -0.5, 0.5)) if bool(r[2] < 0.4) else 0.0
    if {"eyeLookIn", "eyeLookOut"} <= gaze.keys() and horizontal != 0.0:
        if horizontal > 0:  # towards the subject's left
            w[gaze["eyeLookOut"][0]] = horizontal
            w[gaze["eyeLookIn"][1]] = horizontal
        else:
            w[gaze["eyeLookIn"][0]] = -horizontal
            w[gaze["eyeLookOut"][1]] = -horizontal
    if {"eyeLookUp", "eyeLookDown"} <= gaze.keys() and vertical != 0.0:
        l_, r_ = gaze["eyeLookUp"] if vertical > 0 else gaze["eyeLookDown"]
        w[l_] = abs(vertical)
        w[r_] = abs(vertical)
    return (w * settings.exp_scale).clamp(0.0, 1.0)


def sample_sh(gen: torch.Generator, batch: int, light_strength: float = 1.0) -> Tensor:
    """Plausible SH lighting, (B, 27) float64, Deep3D's channel-major layout without the +0.8 DC offset.

    Ambient: Deep3D's default DC (0.8) times a brightness factor uniform in ``[0.75, 1.2]`` and a per-channel
    tint (``N(0, 0.05)`` truncated at 0.12: a colour-temperature shift). Directional: 0, 1 or 2 distant lights
    (probabilities 0.15, 0.6, 0.25) from directions ``normalise(N(0, I) + (0, 0.4, 1))`` (mostly in front of and
    above the face), each the band 0-2 SH projection of a directional light (``gamma_k ~ Y_k(d)`` with
    ``Y_k = sh_basis / a_l``, Deep3D's sign convention), scaled so that the irradiance it adds facing the light is
    a fraction uniform in ``[0.15, 0.9] * light_strength`` of the ambient irradiance, with a slight colour
    (``1 + N(0, 0.04)`` per channel); 30 % of its DC term is taken back from the ambient so lit faces keep
    shadows rather than only getting brighter.
    """
    a_per_k = torch.tensor([SH_A[0]] + [SH_A[1]] * 3 + [SH_A[2]] * 5, dtype=torch.float64)
    ambient_irradiance = SH_DC_OFFSET * SH_A[0] / math.sqrt(4.0 * math.pi)  # 0.709: Deep3D's default light
    out = torch.zeros(batch, 3, 9, dtype=torch.float64)
    for b in range(batch):
        brightness = float(_uniform(gen, 1, 0.75, 1.2))
        tint = (torch.randn(3, generator=gen, dtype=torch.float64) * 0.05).clamp(-0.12, 0.12)
        out[b, :, 0] = SH_DC_OFFSET * (brightness * (1.0 + tint) - 1.0)
        u = float(torch.rand(1, generator=gen, dtype=torch.float64))
        n_lights = 0 if u < 0.15 else (1 if u < 0.75 else 2)
        for k in range(2):  # a fixed number of draws whatever n_lights is
            d = torch.randn(3, generator=gen, dtype=torch.float64) + torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
            d = d / d.norm().clamp_min(1e-6)
            fraction = float(_uniform(gen, 1, 0.15, 0.9)) * light_strength
            colour = 1.0 + (torch.randn(3, generator=gen, dtype=torch.float64) * 0.04).clamp(-0.1, 0.1)
            if k >= n_lights:
                continue
            basis_d = sh_basis(d[None]).to(torch.float64)[0]  # (9,) scaled basis at d
            y = basis_d / a_per_k  # unit SH functions at d
            gamma = y * (fraction * ambient_irradiance / float(basis_d @ y))
            out[b] += colour[:, None] * gamma[None, :]
            out[b, :, 0] -= 0.3 * float(gamma[0])
    return out.reshape(batch, 27)


def sample_params(
    face_model: FaceModel,
    batch: int,
    generator: torch.Generator,
    *,
    max_yaw_deg: float = 60.0,
    extreme_yaw_fraction: float = 0.1,
    extreme_yaw_limit_deg: float = 90.0,
    pitch_std_deg: float = 10.0,
    max_pitch_deg: float = 30.0,
    pitch_mean_deg: float = 0.0,
    roll_std_deg: float = 6.0,
    max_roll_deg: float = 20.0,
    id_scale: float = 1.0,
    exp_scale: float = 1.0,
    tex_scale: float = 1.0,
    neutral_fraction: float = 0.1,
    max_active_expressions: int = 5,
    light_strength: float = 1.0,
    shift_std_mm: float = 8.0,
    max_shift_mm: float = 20.0,
    depth_range_mm: float = 80.0,
    expression_prototypes: float = 0.0,
) -> FaceParams:
    """Random coefficients from the face model's prior and plausible pose, light and placement.

    Args:
        face_model: provides the layout, ``id_std``/``tex_std``, ``exp_kind`` and ``exp_names``.
        batch: number of faces B.
        generator: a CPU ``torch.Generator``; the result is a deterministic function of its state.
        max_yaw_deg: yaw is uniform in ``[-max_yaw, max_yaw]`` for most samples.
        extreme_yaw_fraction: fraction of samples with ``max_yaw < |yaw| <= extreme_yaw_limit_deg``.
        extreme_yaw_limit_deg: largest |yaw| (at most 90, a full profile).
        pitch_std_deg, max_pitch_deg, pitch_mean_deg: pitch ~ mean + N(0, std) truncated at +-max (the synthetic
            dataset sets the mean to :func:`msma.face_model.landmark_convention.photo_pitch` of its model).
        roll_std_deg, max_roll_deg: roll ~ N(0, std) truncated at +-max.
        id_scale: identity ``~ N(0, (id_scale * id_std)^2)`` per coefficient, truncated at 3 sigma.
        exp_scale: PCA expressions ``~ N(0, exp_scale^2)`` (truncated at 3); blendshape weights are multiplied
            by it (then clipped to [0, 1]).
        tex_scale: albedo ``~ N(0, (tex_scale * tex_std)^2)``, truncated at 3 sigma.
        neutral_fraction: fraction of blendshape samples with a neutral expression (gaze still varies).
        max_active_expressions: blendshape samples activate 1..max expression shapes (``_L``/``_R`` pairs count
            once, mutually exclusive shapes such as ``jawLeft``/``jawRight`` never together).
        expression_prototypes: fraction of the non-neutral blendshape samples (ARKit names) whose expression is one
            of :data:`EXPRESSION_PROTOTYPES` (FACS-coded smiles, laughter and basic emotions at an intensity
            uniform in [0.35, 1]) instead of a random combination; 0 (the default): random combinations only.
        light_strength: scales the directional light intensity (see :func:`sample_sh`).
        shift_std_mm, max_shift_mm: x/y translation ~ N(0, std) truncated at +-max (mm; 1 mm ~ 1 px at 224).
        depth_range_mm: z translation uniform in +-range (mm): a scale change of about +-range/1000.

    Returns:
        :class:`FaceParams` (float32, CPU) with B rows in ``face_model.layout``.
    """
    settings = SamplingSettings(
        max_yaw_deg=max_yaw_deg,
        extreme_yaw_fraction=extreme_yaw_fraction,
        extreme_yaw_limit_deg=extreme_yaw_limit_deg,
        pitch_std_deg=pitch_std_deg,
        max_pitch_deg=max_pitch_deg,
        pitch_mean_deg=pitch_mean_deg,
        roll_std_deg=roll_std_deg,
        max_roll_deg=max_roll_deg,
        id_scale=id_scale,
        exp_scale=exp_scale,
        tex_scale=tex_scale,
        neutral_fraction=neutral_fraction,
        max_active_expressions=max_active_expressions,
        light_strength=light_strength,
        shift_std_mm=shift_std_mm,
        max_shift_mm=max_shift_mm,
        depth_range_mm=depth_range_mm,
        expression_prototypes=expression_prototypes,
    )
    return sample_params_with(face_model, batch, generator, settings)


def check_expression_settings(face_model: FaceModel, settings: SamplingSettings) -> None:
    """Raises ``ValueError`` for expression settings the face model's expressions cannot follow.

    ``neutral_fraction`` and ``expression_prototypes`` shape the blendshape prior (ARKit-style names, e.g.
    ICT-FaceKit); PCA expressions (BFM) are drawn from ``N(0, exp_scale^2)`` and the prototypes need the named shapes.
    Rather than ignoring such a setting, the dataset refuses it.
    """
    name = face_model.name
    if face_model.exp_kind != "blendshape":
        changed = [
            f"{field}={getattr(settings, field)}"
            for field in ("neutral_fraction", "expression_prototypes")
            if getattr(settings, field) != getattr(SamplingSettings, field)
        ]
        if changed:
            raise ValueError(
                f"face model {name!r} has PCA expressions (drawn from N(0, exp_scale^2)): {', '.join(changed)} "
                "apply to blendshape models (ICT-FaceKit) only; leave them at their defaults"
            )
        return
    if settings.expression_prototypes > 0:
        structure = _expression_structure(tuple(face_model.exp_names))
        wanted = {shape for proto in EXPRESSION_PROTOTYPES.values() for shape in proto}
        if structure is None or not wanted & set(structure[0]):
            raise ValueError(
                f"face model {name!r}: expression_prototypes={settings.expression_prototypes} needs ARKit-named "
                "blendshapes (e.g. mouthSmile_L / mouthSmile_R), and its expression names have none of the prototypes' "
                "shapes"
            )


def sample_params_with(face_model: FaceModel, batch: int, gen: torch.Generator, s: SamplingSettings) -> FaceParams:
    """:func:`sample_params` with the settings as a :class:`SamplingSettings` record."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    layout = face_model.layout
    id_std = face_model.id_std.detach().cpu().to(torch.float64)
    tex_std = face_model.tex_std.detach().cpu().to(torch.float64)
    ident = torch.stack([_truncated_normal(gen, layout.n_id, 1.0, 3.0) for _ in range(batch)]) * id_std * s.id_scale
    tex = torch.stack([_truncated_normal(gen, layout.n_tex, 1.0, 3.0) for _ in range(batch)]) * tex_std * s.tex_scale
    if s.skin_tone_mixture:
        tex = torch.stack([population_albedo(gen, tuple(face_model.tex_names), t, tex_std) for t in tex])
    if face_model.exp_kind == "blendshape":
        exp = torch.stack([_sample_blendshapes(gen, tuple(face_model.exp_names), s) for _ in range(batch)])
    else:
        exp = torch.stack([_truncated_normal(gen, layout.n_exp, 1.0, 3.0) for _ in range(batch)]) * s.exp_scale
    angles = sample_pose(gen, batch, s)
    sh = sample_sh(gen, batch, s.light_strength)
    txy = torch.stack([_truncated_normal(gen, 2, s.shift_std_mm, s.max_shift_mm) for _ in range(batch)])
    tz = _uniform(gen, batch, -s.depth_range_mm, s.depth_range_mm)[:, None]
    trans = torch.cat([txy, tz], dim=1)
    f32 = torch.float32
    return FaceParams(
        id=ident.to(f32), exp=exp.to(f32), tex=tex.to(f32), angles=angles.to(f32), sh=sh.to(f32), trans=trans.to(f32)
    )


#: Skin-tone clusters in units of the albedo prior's std: (skin_brightness, skin_redness, skin_yellowness) means
#: and draw weights, spanning very light to very dark skin (Fitzpatrick I-VI, roughly) so every population is
#: common in the data rather than the tails of one Gaussian.
SKIN_TONES = (
    (2.0, -0.3, -0.3),
    (1.0, 0.3, 0.0),
    (0.0, 0.0, 0.6),
    (-1.0, 0.2, 0.6),
    (-2.0, 0.0, 0.3),
    (-2.8, -0.2, 0.0),
)
SKIN_TONE_P = (0.15, 0.2, 0.2, 0.17, 0.15, 0.13)


def population_albedo(gen: torch.Generator, names: tuple[str, ...], tex: Tensor, tex_std: Tensor) -> Tensor:
    """Re-draws the named albedo modes of one sample from population-level distributions (exact coefficients).

    Skin tone from a mixture of :data:`SKIN_TONES` (+- 0.35 std); makeup-like lips (25 %: redder or darker
    lips, stronger cheek flush); stubble (30 % of samples, up to 3 std). Models without these mode names keep
    ``tex``. Always draws 8 uniforms and 3 normals (determinism).

    Args:
        gen: the sample's generator.
        names: the face model's albedo mode names.
        tex: (n_tex,) coefficients drawn from the prior.
        tex_std: (n_tex,) prior std.

    Returns:
        (n_tex,) coefficients, clipped to +-3.2 std.
    """
    u = torch.rand(8, generator=gen, dtype=torch.float64)
    z = torch.randn(3, generator=gen, dtype=torch.float64)
    out = tex.clone().double()
    idx = {n: i for i, n in enumerate(names)}
    tone_keys = ("skin_brightness", "skin_redness", "skin_yellowness")
    if all(k in idx for k in tone_keys):
        k = int(torch.searchsorted(torch.tensor(SKIN_TONE_P, dtype=torch.float64).cumsum(0), u[0].clamp(max=0.9999)))
        for j, key in enumerate(tone_keys):
            out[idx[key]] = (SKIN_TONES[k][j] + 0.35 * float(z[j])) * float(tex_std[idx[key]])
    if "lip_redness" in idx and float(u[1]) < 0.25:
        out[idx["lip_redness"]] = (1.0 + 2.0 * float(u[2])) * float(tex_std[idx["lip_redness"]])
        if "lip_darkness" in idx:
            out[idx["lip_darkness"]] = (float(u[3]) * 4.0 - 2.0) * float(tex_std[idx["lip_darkness"]])
        if "cheek_flush" in idx:
            out[idx["cheek_flush"]] = (0.5 + 2.0 * float(u[4])) * float(tex_std[idx["cheek_flush"]])
    if "stubble" in idx:
        if float(u[5]) < 0.3:
            out[idx["stubble"]] = (0.5 + 2.5 * float(u[6])) * float(tex_std[idx["stubble"]])
        elif float(u[7]) < 0.5:
            out[idx["stubble"]] = -abs(float(out[idx["stubble"]]))  # clean-shaven half of the rest
    lim = 3.2 * tex_std.double()
    return torch.maximum(torch.minimum(out, lim), -lim).to(tex.dtype)


def sample_seed(seed: int, index: int) -> int:
    """The 63-bit seed of sample ``index`` of a dataset seeded with ``seed`` (well mixed, order-free)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    state = np.random.SeedSequence([int(seed), int(index), SYNTHETIC_VERSION]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)
