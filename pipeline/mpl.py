"""matplotlib for every figure of the pipeline: the Agg backend (files, no display) is chosen here, once,
before pyplot is first imported; import `plt` and `save` from this module, never pyplot directly."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def save(fig, path: Path, dpi: float | None = None) -> Path:
    """Lay out, write (parent folders made; atomically: a full disk leaves no half figure and names the file)
    and close the figure."""
    from fcos.files import atomic_write
    fig.tight_layout()
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format=path.suffix.lstrip(".") or None, dpi=dpi)
    finally:
        plt.close(fig)
    return path
