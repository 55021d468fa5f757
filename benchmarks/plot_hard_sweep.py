"""The README's results plot: the hard-phantom sweep's per-seed test Dice, read from its committed table.

Run: ``python benchmarks/plot_hard_sweep.py`` (writes ``docs/images/hard_sweep_before_fixes.png``). The values are
those of the table "The sweep: 6 methods x 3 label fractions x 3 seeds" in ``docs/results_hard_sweep.md``
(each cell's per-seed values in brackets ``(a / b / c)``), measured **before the fixes of issue #24**; the plot says
so. It is drawn by the sweep's own :func:`~ideal_components.experiments.results.plot_results`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ideal_components.experiments.results import plot_results  # noqa: E402

FRACTIONS = ["2.5", "10", "100"]  # the table's columns: 1 volume, 2 volumes, all 15
LABELS = {"2.5": "1 volume (2.5 %)", "10": "2 volumes (10 %)", "100": "15 volumes (100 %)"}


def read_table(markdown: Path) -> list[dict]:
    """``plot_results`` rows from the table whose cells read ``mean [lo, hi] (s0 / s1 / s2)``."""
    rows = []
    for line in markdown.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not all(re.search(r"\(([\d.]+(?: / [\d.]+)+)\)$", c) for c in cells[1:]):
            continue
        label = cells[0].replace(" (random init)", "")
        for fraction, cell in zip(FRACTIONS, cells[1:]):
            values = [float(v) for v in re.search(r"\(([\d. /]+)\)$", cell).group(1).split(" / ")]
            rows.append({"label": label, "fraction": fraction, "dice_values": values})
    if not rows:
        raise SystemExit(f"{markdown}: no table with per-seed values found")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", default=str(REPO / "docs" / "results_hard_sweep.md"))
    parser.add_argument("--out", default=str(REPO / "docs" / "images" / "hard_sweep_before_fixes.png"))
    args = parser.parse_args()
    rows = read_table(Path(args.markdown))
    title = "Hard phantoms, 3 seeds, BEFORE the equal-footing fixes (issue #24): being re-run"
    plot_results(rows, args.out, title=title, fraction_labels=LABELS)
    print(f"{len(rows)} cells -> {args.out}")


if __name__ == "__main__":
    main()
