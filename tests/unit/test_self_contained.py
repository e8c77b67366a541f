"""The repository stands alone: no tracked file reaches for a sibling `shared/` folder, which a clone does not have."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_tracked_file_points_outside_the_repository():
    needle = "../" + "shared"          # split so this file does not match itself
    out = subprocess.run(["git", "grep", "-n", "-I", "-F", "-e", needle, "-e", "/work/" + "shared", "-e",
                          "MINDIE_LIKE_" + "SHARED"], cwd=REPO, capture_output=True, text=True)
    if out.returncode == 128 or "not a git repository" in out.stderr:
        import pytest
        pytest.skip("not a git checkout")
    assert out.stdout == "", "tracked files point at a folder beside the clone:\n" + out.stdout
