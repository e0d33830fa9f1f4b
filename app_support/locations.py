"""Where the project keeps its runs: the app's choice, not the library's.

The library takes folders as arguments; only the app knows it lives in a
checkout with `assets/` and `runs/` beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

#: The project's root folder (it holds app.py, pages/, assets/).
PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The entry script: every page runs through it, so every page has the sidebar.
APP_SCRIPT = PROJECT_ROOT / "app.py"
#: The bundled default run.
BUNDLED_RUN = PROJECT_ROOT / "assets" / "default_run"
#: Where the Train page and the V4 import put the runs they make.
RUNS_DIR = PROJECT_ROOT / "runs"
#: Where the public V4 release is looked for by default (the same place the tests look).
COWLEY_DEFAULT = Path(os.environ.get("COMPACTVISION_COWLEY_DIR", PROJECT_ROOT.parent / "shared" / "data" / "cowley_v4"))
#: The profile page, which the gallery opens on a click (a path relative to APP_SCRIPT, as `st.switch_page` takes).
PROFILE_PAGE = "pages/profile.py"
