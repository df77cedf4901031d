"""PNG figures for RESULTS.md from `opdkit report`'s own renderers: the curves of some runs, and word clouds
of one run's sampled responses at chosen steps (before, at and after a turn).

    python examples/heal/figures.py curves docs/heal64_curves.png runs/heal64/topk_rkl_tail runs/heal64/topk_rkl_unnorm
    python examples/heal/figures.py clouds docs/heal64_unnorm_clouds.png runs/heal64/topk_rkl_unnorm --steps 1 8 16

(`opdkit report RUN ... --out page.html` shows the same figures, with the guard's alarm table, in one page.)
"""
from __future__ import annotations

import argparse
import base64
import io
from pathlib import Path

from PIL import Image

from opdkit.analysis.report import RunData, curves_figure, word_clouds


def decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def side_by_side(images: list[Image.Image], captions: list[str]) -> Image.Image:
    """The images in one row, each with its caption drawn above it."""
    from PIL import ImageDraw
    width, height = sum(i.width for i in images) + 10 * (len(images) - 1), max(i.height for i in images) + 20
    out, x = Image.new("RGB", (width, height), "white"), 0
    draw = ImageDraw.Draw(out)
    for image, caption in zip(images, captions, strict=True):
        out.paste(image, (x, 20))
        draw.text((x + 4, 4), caption, fill="black")
        x += image.width + 10
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["curves", "clouds"])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--steps", nargs="*", type=int, default=None, help="clouds: the logged sample steps nearest these")
    args = ap.parse_args()
    if args.kind == "curves":
        uri = curves_figure([RunData(r) for r in args.runs])
        if uri is None:
            raise SystemExit("no curves in these runs")
        decode(uri).save(args.out)
    else:
        clouds = [(step, uri) for step, uri in word_clouds(RunData(args.runs[0]), steps=args.steps) if uri]
        side_by_side([decode(uri) for _, uri in clouds], [f"step {step}" for step, _ in clouds]).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
