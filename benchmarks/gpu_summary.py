"""The table of ``benchmarks/gpu.sh`` and its targets: ``python -m benchmarks.gpu_summary DIR``.

Target (the GPU input path): the recipe with ``data.decode: dali`` and compile at least 5,000
images/s and 0.9 of the compiled synthetic step, under 5 % of step time waiting for data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {"failed": True}


def main() -> None:
    """Print a Markdown table of every result in the folder and the target check."""
    folder = Path(sys.argv[1])
    step = {c: _read(folder / f"step-{c}.json").get("images_per_s") for c in ("eager", "compile")}
    print(f"\nsynthetic step: eager {step['eager']} img/s, compiled {step['compile']} img/s\n")
    print("| folder | path | input alone img/s | recipe img/s | compiled img/s | waiting | "
          "of compiled step |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for recipe in sorted(folder.glob("recipe-*-cpu.json")) + sorted(
        folder.glob("recipe-*-dali.json")
    ):
        name, decode = recipe.stem.removeprefix("recipe-").rsplit("-", 1)
        alone = _read(folder / f"input-{name}-{decode}.json").get("images_per_s")
        eager = _read(recipe)
        compiled = _read(folder / f"recipe-{name}-{decode}-compile.json")
        rate = compiled.get("images_per_s")
        share = f"{rate / step['compile']:.2f}" if rate and step["compile"] else "-"
        wait = compiled.get("data_wait_fraction", eager.get("data_wait_fraction"))
        cells = [name, decode, alone, eager.get("images_per_s"), rate, wait, share]
        print("| " + " | ".join(str(c) for c in cells) + " |")
        if decode == "dali" and rate and step["compile"]:
            met = rate >= 5000 and rate >= 0.9 * step["compile"] and (wait or 1) < 0.05
            print(f"target ({name}, dali + compile >= 5,000 img/s, >= 0.9 of the step, < 5 % "
                  f"waiting): {'met' if met else 'missed'}", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
