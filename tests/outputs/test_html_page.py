"""The batch QA page rendered by real headless Chromium from disk: it loads, shows every case (done,
failed with its reason, skipped), and its thumbnails load through relative links."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
from outputs_helpers import require_tool
from PIL import Image

from segtrt.outputs import BatchCaseSummary, OutputOptions, write_batch_outputs
from segtrt.outputs.labels import label_color

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run")


def _chromium(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    tool = require_tool("chromium", "apt-get install chromium")
    return subprocess.run([tool, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *arguments],
                          capture_output=True, text=True, timeout=120, check=True)


def _batch(written_case, output_dir: Path) -> list[BatchCaseSummary]:
    outputs, _ = written_case
    return [BatchCaseSummary("patient1", "done", files=outputs.files, statistics=outputs.statistics,
                             warnings=tuple(outputs.warnings)),
            BatchCaseSummary("patient <2> & co", "failed", error="cannot read DICOM series: missing slices"),
            BatchCaseSummary("notes.txt", "skipped", error="not an image")]


def test_page_loads_in_chromium_and_shows_every_case(written_case, tmp_path):
    output_dir = written_case[1].parent.parent  # the batch's output folder, above patient1/
    cases = _batch(written_case, output_dir)
    page = write_batch_outputs(output_dir, cases, OutputOptions(statistics=True, preview=True))["index"]
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    for case in cases:
        assert f'data-case-id="{case.case_id.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}"' in dom
    assert "missing slices" in dom and "1 done, 1 failed, 1 skipped" in dom
    assert "derived missing DICOM UIDs" in dom
    assert 'src="patient1/ct.preview.png"' in dom and ">liver<" in dom
    screenshot = tmp_path / "page.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1100,1400", page.as_uri())
    pixels = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    liver = np.abs(pixels - np.array(label_color(1))).sum(axis=2) < 40
    assert np.count_nonzero(liver) > 50  # the thumbnail's label outline is on screen: the image loaded
