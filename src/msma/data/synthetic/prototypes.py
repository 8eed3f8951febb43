"""FACS-coded prototype expressions for the synthetic expression prior (``expression_prototypes``; drawn by
:mod:`msma.data.synthetic.sampling`, docs/synthetic.md)."""

from __future__ import annotations

#: Prototypical facial expressions as ARKit blendshape weights at full intensity (``_L``/``_R`` sides together),
#: from the Action Units the Facial Action Coding System gives each (Ekman & Friesen, FACS 1978; EMFACS's basic
#: emotions) through the usual AU -> ARKit correspondence: AU1 browInnerUp, AU2 browOuterUp, AU4 browDown,
#: AU5 eyeWide, AU6 cheekSquint, AU7 eyeSquint, AU9 noseSneer, AU10 mouthUpperUp, AU12 mouthSmile,
#: AU14 mouthDimple, AU15 mouthFrown, AU16 mouthLowerDown, AU17 mouthShrugLower, AU20 mouthStretch,
#: AU23/24 mouthPress, AU25/26 lips part / jawOpen. Random combinations of single shapes rarely build these (a
#: toothy smile needs AU6 + 12 + 25 at once), while photographed faces show these combinations, smiles above all.
EXPRESSION_PROTOTYPES: dict[str, dict[str, float]] = {
    # Happiness, closed lips (AU6 + 12, a Duchenne smile).
    "smile": {"cheekSquint": 0.5, "mouthSmile": 0.8, "mouthDimple": 0.2, "eyeSquint": 0.2},
    # Happiness, lips apart and upper teeth showing (AU6 + 12 + 25 + 26).
    "open_smile": {
        "cheekSquint": 0.6,
        "mouthSmile": 0.9,
        "mouthUpperUp": 0.4,
        "mouthLowerDown": 0.3,
        "jawOpen": 0.15,
        "eyeSquint": 0.3,
    },
    # Laughter (AU6 + 7 + 12 + 25 + 27).
    "laugh": {
        "cheekSquint": 0.8,
        "mouthSmile": 1.0,
        "mouthUpperUp": 0.5,
        "mouthLowerDown": 0.5,
        "jawOpen": 0.45,
        "eyeSquint": 0.5,
    },
    # Surprise (AU1 + 2 + 5 + 26).
    "surprise": {"browInnerUp": 0.8, "browOuterUp": 0.8, "eyeWide": 0.6, "jawOpen": 0.5},
    # Sadness (AU1 + 4 + 15 + 17).
    "sadness": {"browInnerUp": 0.7, "browDown": 0.3, "mouthFrown": 0.6, "mouthShrugLower": 0.3},
    # Anger (AU4 + 5 + 7 + 23).
    "anger": {"browDown": 0.9, "eyeWide": 0.2, "eyeSquint": 0.4, "mouthPress": 0.6},
    # Disgust (AU9 + 10 + 15 + 16).
    "disgust": {"noseSneer": 0.8, "mouthUpperUp": 0.6, "mouthFrown": 0.3, "mouthLowerDown": 0.3, "browDown": 0.4},
    # Fear (AU1 + 2 + 4 + 5 + 20 + 26).
    "fear": {
        "browInnerUp": 0.8,
        "browOuterUp": 0.5,
        "browDown": 0.3,
        "eyeWide": 0.7,
        "mouthStretch": 0.6,
        "jawOpen": 0.25,
    },
    # Contempt (unilateral AU12 + 14): one side only.
    "contempt": {"mouthSmile": 0.5, "mouthDimple": 0.5},
}
#: Prototypes whose shapes are raised on one side only (the side drawn per sample).
UNILATERAL_PROTOTYPES = frozenset({"contempt"})
