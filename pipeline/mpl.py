"""matplotlib for every figure of the pipeline: the Agg backend (files, no display) is chosen here, once,
before pyplot is first imported; import `plt` and `save` from this module, never pyplot directly."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def save(fig, path: Path) -> Path:
    """Lay out, write (parent folders made) and close the figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
