"""Where the shared recorded data is: ``AETHERION_SHARED_DATA``, else ``shared/data`` beside the
repository (or beside any folder above it), else ``/work/shared/data``."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data() -> Path:
    given = os.environ.get("AETHERION_SHARED_DATA")
    candidates = [Path(given)] if given else []
    candidates += [p / "shared" / "data" for p in Path(__file__).resolve().parents]
    candidates.append(Path("/work/shared/data"))
    for c in candidates:
        if (c / "SHA256SUMS").is_file():
            return c
    raise RuntimeError("the shared data folder was not found; set AETHERION_SHARED_DATA")


DATA = shared_data()
