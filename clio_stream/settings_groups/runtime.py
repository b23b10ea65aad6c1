"""Runtime settings: the cache folder, progress bars, the packaged example data's size.

A group of ``ClioSettings`` fields (``clio_stream.settings``), in the order the reference lists them.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


class RuntimeFields(BaseModel):
    # --- runtime ---
    cache_dir: Path = Field(default_factory=lambda: Path(os.environ.get("CLIO_CACHE_DIR", "~/.cache/clio-stream")).expanduser(),
        description="Where packaged models, example data, binaries and run logs live (CLIO_CACHE_DIR).")
    show_progress: bool = Field(True, description="Show progress bars for long stages (and, in runClio, the "
                                "stage log on the console).")
    example_conversations: int = Field(
        300, ge=1, description="How many packaged example conversations get_example_data() returns when not told.")
