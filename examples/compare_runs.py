#!/usr/bin/python3
"""Compares `diffpost eval` runs on the same measurements against a baseline: per task, every method and
step count with its network evaluations per image, mean PSNR and SSIM, and the paired PSNR difference to the
baseline image by image (mean, standard deviation, images better); optionally a plot of PSNR against network
evaluations, one panel per task.

    /usr/bin/python3 examples/compare_runs.py --baseline /tmp/dps1000 [--baseline ...] \
        --baseline-label "DPS, 1000 steps" /tmp/dps100 /tmp/fast [--max-nfe 100] [--plot docs/images/nfe.png]

Each folder holds the results.csv and per_image.csv that `diffpost eval` writes; the runs must have used the
same images, seed, noise and task settings (the script checks that image names match). Prints a Markdown
table. The plot needs Debian's python3-matplotlib.
"""
import argparse
import collections
import csv
import math
import os
import re
import sys


def command_steps(folder):
    """The --steps of the command in results.md; the tool's default (100) when it has none."""
    with open(os.path.join(folder, "results.md")) as f:
        match = re.search(r"--steps (\d+)", f.read())
    return match.group(1) if match else "100"


def read_rows(folder):
    """results.csv rows and per-image PSNR, keyed by (task, method, steps)."""
    results, per_image = {}, collections.defaultdict(dict)
    steps = command_steps(folder)
    with open(os.path.join(folder, "results.csv"), newline="") as f:
        for row in csv.DictReader(f):
            results[(row["task"], row["method"], row["value"] if row["sweep"] == "steps" else steps)] = row
    with open(os.path.join(folder, "per_image.csv"), newline="") as f:
        for row in csv.DictReader(f):
            key = (row["task"], row["method"], row["value"] if row["sweep"] == "steps" else steps)
            per_image[key][row["image"]] = float(row["psnr"])
    return results, per_image


def mean_std(values):
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="eval output folders to compare")
    parser.add_argument("--baseline", required=True, action="append",
                        help="eval output folder of the baseline (one method per task); repeat for more folders")
    parser.add_argument("--baseline-label", default="baseline")
    parser.add_argument("--max-nfe", type=int, default=0, help="mark rows with at most this many evaluations")
    parser.add_argument("--plot", help="PNG: mean PSNR against network evaluations per image, per task")
    args = parser.parse_args()

    baseline = {}
    for folder in args.baseline:
        base_results, base_images = read_rows(folder)
        for (task, method, steps), row in base_results.items():
            if method != "naive":
                baseline[task] = (row, base_images[(task, method, steps)])
    rows = collections.defaultdict(list)
    for folder in args.runs:
        results, images = read_rows(folder)
        for key, row in results.items():
            task, method, steps = key
            if method == "naive" or task not in baseline:
                continue
            base_row, base_psnr = baseline[task]
            if set(images[key]) != set(base_psnr):
                sys.exit(f"{folder}: the images of {task} differ from the baseline's")
            differences = [images[key][name] - base_psnr[name] for name in base_psnr]
            rows[task].append((method, steps, row, differences))

    print(f"| task | method | steps | network fwd / bwd per image | PSNR (dB) | SSIM | FD | PSNR - {args.baseline_label} "
          "(paired, dB) | images better |")
    print("|---|---|---|---|---|---|---|---|---|")
    bests = []
    for task, (base_row, _) in baseline.items():
        print(f"| {task} | {args.baseline_label} | | {base_row['forwards']} / {base_row['backwards']} | "
              f"{float(base_row['psnr_mean']):.2f} ± {float(base_row['psnr_std']):.2f} | "
              f"{float(base_row['ssim_mean']):.3f} | {float(base_row['frechet']):.2f} | | |")
        best = None
        for method, steps, row, differences in sorted(rows[task], key=lambda r: (r[0], int(r[1]))):
            mean, std = mean_std(differences)
            better = sum(d > 0 for d in differences)
            forwards = int(row["forwards"])
            within = args.max_nfe and forwards <= args.max_nfe
            if within and (best is None or float(row["psnr_mean"]) > float(best[2]["psnr_mean"])):
                best = (method, steps, row, mean)
            mark = "" if not args.max_nfe or within else " (over budget)"
            fd = f"{float(row['frechet']):.2f}" if row["frechet"] else "-"
            print(f"| {task} | {method}{mark} | {steps} | {row['forwards']} / {row['backwards']} | "
                  f"{float(row['psnr_mean']):.2f} ± {float(row['psnr_std']):.2f} | {float(row['ssim_mean']):.3f} | "
                  f"{fd} | {mean:+.2f} ± {std:.2f} | {better} of {len(differences)} |")
        if best:
            bests.append((task, base_row, best))
    if bests:
        print(f"\n| task | {args.baseline_label} PSNR (dB) | best at <= {args.max_nfe} evaluations | steps | "
              "PSNR (dB) | paired difference (dB) |")
        print("|---|---|---|---|---|---|")
        for task, base_row, (method, steps, row, mean) in bests:
            print(f"| {task} | {float(base_row['psnr_mean']):.2f} | {method} | {steps} | "
                  f"{float(row['psnr_mean']):.2f} | {mean:+.2f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tasks = list(baseline)
        methods = sorted({method for task in tasks for method, _, _, _ in rows[task]})
        colors = {method: plt.get_cmap("tab10")(i % 10) for i, method in enumerate(methods)}
        figure, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), sharey=False)
        for axis, task in zip(axes if len(tasks) > 1 else [axes], tasks):
            by_method = collections.defaultdict(list)
            for method, steps, row, _ in rows[task]:
                by_method[method].append((int(row["forwards"]), float(row["psnr_mean"])))
            for method, points in sorted(by_method.items()):
                points.sort()
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method,
                          color=colors[method])
            base_row, _ = baseline[task]
            axis.plot([int(base_row["forwards"])], [float(base_row["psnr_mean"])], marker="*", markersize=12,
                      color="black", linestyle="none", label=args.baseline_label)
            axis.axhline(float(base_row["psnr_mean"]), color="black", linewidth=0.5, linestyle=":")
            axis.set_xscale("log")
            axis.set_title(task)
            axis.set_xlabel("network evaluations per image")
            axis.grid(True, which="both", linewidth=0.3)
        (axes[0] if len(tasks) > 1 else axes).set_ylabel("mean PSNR (dB)")
        legend = {}
        for axis in axes if len(tasks) > 1 else [axes]:
            for handle, label in zip(*axis.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        figure.legend(list(legend.values()), list(legend), loc="lower center", ncol=len(legend), fontsize="small")
        figure.tight_layout(rect=(0, 0.1, 1, 1))
        figure.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
