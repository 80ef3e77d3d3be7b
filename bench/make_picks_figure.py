"""Draw one micrograph's picks against its ground truth: docs/empiar10017_test_picks.jpg in the README.

Green circles: every ground-truth particle (0.5 x diameter radius = the matching radius). Picks at or
above the evaluation's best-F1 threshold: blue when matched one-to-one to a particle, red when not.

    python -m bench.make_picks_figure --picks bench_runs/empiar_fixmatch/picks_ours \
        --summary bench_runs/empiar_fixmatch/eval_ours.json --stem Falcon_2012_06_12-14_33_35_0
"""
import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from datasets.io.coordinates import read_coco
from picking.evaluate import match_picks
from picking.writers import read_candidates

EMPIAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "empiar10017"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--picks", required=True)
    parser.add_argument("--summary", required=True, help="evaluate_picks.py summary (for the threshold)")
    parser.add_argument("--stem", required=True)
    parser.add_argument("--data-root", default=str(EMPIAR))
    parser.add_argument("--output", default="docs/empiar10017_test_picks.jpg")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    radius = summary["radius"]
    truth = read_coco(Path(args.data_root) / "annotations" / "instances_test.json")[0][args.stem]
    picks = read_candidates(args.picks, args.stem)
    kept = picks[picks[:, 3] >= summary["threshold"]]
    matched = match_picks(kept[:, :2], truth[:, :2], radius)
    image = Image.open(Path(args.data_root) / "test" / f"{args.stem}.jpg").convert("RGB")
    draw = ImageDraw.Draw(image)
    for x, y, *_ in truth:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=(0, 220, 0), width=7)
    for (x, y, _, _), particle in zip(kept, matched):
        draw.ellipse([x - 22, y - 22, x + 22, y + 22], outline=(0, 140, 255) if particle >= 0 else (255, 40, 40),
                     width=12)
    image.resize((1200, 1200), Image.Resampling.LANCZOS).save(args.output, quality=85)
    print(f"{args.output}: {len(truth)} particles, {len(kept)} picks >= threshold {summary['threshold']:.3f}, "
          f"{int((matched >= 0).sum())} matched")


if __name__ == "__main__":
    main()
