"""The About tab: what the project is, what a saved drawing holds, and which capitals the model has never seen
(:func:`missing_uppercase`, from the prepared data when present)."""

from __future__ import annotations

import json
import logging

from ukr_hw import labels
from ukr_hw.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Letters with no uppercase sample in the training data (Rukopys); used when the prepared data is not at hand.
MISSING_UPPERCASE_FALLBACK = tuple("импрстуфхцчшщьюяґ")


def missing_uppercase(settings: Settings | None = None) -> list[str]:
    """Letters without uppercase training data: from the prepared data when present, else the known list."""
    settings = settings or get_settings()
    manifest = settings.processed_dir / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        for key in ("missing_uppercase", "letters_without_uppercase", "no_uppercase"):
            if isinstance(data.get(key), list):
                return [labels.normalize_symbol(s) for s in data[key]]
    except (OSError, ValueError, labels.UnknownSymbolError):
        pass
    train = settings.processed_dir / "finetune_train.npz"
    if train.exists():
        try:
            from ukr_hw.data.arrays import load_samples

            samples = load_samples(train)
            upper = {labels.symbol_of(int(y)) for y, c in zip(samples.y, samples.case, strict=True) if c == 1}
            return [s for s in labels.LETTERS if s not in upper]
        except Exception as exc:  # a broken file must not stop the UI
            log.warning("could not read %s: %s", train, exc)
    return list(MISSING_UPPERCASE_FALLBACK)


def about_text(no_upper: list[str], store: str, api_url: str) -> str:
    """The About tab's Markdown: ``no_upper`` the letters to ask capitals of, ``store`` and ``api_url`` where the
    drawings go and who reads them."""
    letters = " ".join(f"**{s.upper()}**" for s in no_upper) or "none — every letter has both cases"
    return f"""
## About ukr-hw

**ukr-hw** is an open-source MLOps platform that recognises hand-drawn Ukrainian letters and digits:
43 symbols (0–9 and the 33 letters а–я) and whether a letter is UPPERCASE or lowercase.

* A small convolutional network with two heads (symbol and case) is trained with **Lightning** on the
  [Rukopys](https://github.com/lynnporu/rukopys-dataset) dataset, MNIST digits and font-rendered glyphs;
  **Prefect** runs the data and training flows, **MLflow** tracks the runs and keeps the registry (the
  `champion` alias is what you are talking to), **BentoML** serves it.
* Every drawing you confirm or correct here is stored as a PNG with a small JSON record (the symbol, the case,
  what the model said and whether you asked for letters or digits, the model version, a random per-session id —
  **no personal data**), and the weekly retrain flow learns from them. A new model replaces the champion only if
  it reads better.

### Please draw these capitals
The training data has **no uppercase** samples for: {letters}.
The model has to guess their capitals from the lowercase shapes — every capital you draw and confirm teaches it.

### Good to know
* Draw one symbol per canvas, standing on the solid line. Capitals and digits reach the top line, lowercase the
  dashed one: for letters whose two cases have one shape (о/О, с/С, к/К …) size is all the model can go by.
* Look-alikes are hard: **г/ґ**, **і/ї**, **е/є**, **и/й**, **ш/щ**, **о/0**, **з/3** — draw the marks clearly.
* **З** and **3**, **О** and **0**, **Ь** and **6** are the same drawing: choose *Letters* or *Digits* under the
  canvas and the model picks among those only (*Any*, the default, reads all 43). Your choice is saved with
  the drawing.

<sub>Recognition service: `{api_url}` · feedback store: `{store}`</sub>
"""
