#!/usr/bin/python3
"""Plots a `diffpost eval --sweep FLAG=...` results.csv: PSNR, SSIM and Frechet distance against the swept
value, one line per task and method (error bars: standard deviation over the images). Categorical sweeps
(e.g. scale-schedule, noise) are drawn as points over evenly spaced labels.

    /usr/bin/python3 examples/plot_sweep.py out/sweep/results.csv docs/images/sweep.png [--title TEXT]

Needs Debian's python3-matplotlib (apt-get install python3-matplotlib).
"""
import argparse
import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def as_number(text):
    try:
        return float(text)
    except ValueError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", help="results.csv written by diffpost eval --sweep")
    parser.add_argument("output", help="PNG to write (an existing file is replaced only with --force)")
    parser.add_argument("--title", default="")
    parser.add_argument("--log-x", action="store_true", help="logarithmic x axis for numeric sweeps")
    parser.add_argument("--no-naive", action="store_true", help="leave out the naive inverse")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if os.path.exists(args.output) and not args.force:
        sys.exit(f"plot_sweep.py: error: {args.output} exists; pass --force to replace it")

    with open(args.results, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not rows[0].get("sweep"):
        sys.exit(f"plot_sweep.py: error: {args.results} is not the results.csv of a --sweep run")
    flag = rows[0]["sweep"]
    values = list(dict.fromkeys(r["value"] for r in rows))
    numeric = all(as_number(v) is not None for v in values)
    position = {v: (as_number(v) if numeric else i) for i, v in enumerate(values)}

    series = {}
    for r in rows:
        if args.no_naive and r["method"] == "naive":
            continue
        series.setdefault((r["task"], r["method"]), []).append(r)
    metrics = [("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("frechet", "Frechet distance")]
    if all(not r["frechet"] for r in rows):
        metrics = metrics[:2]

    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, (key, label) in zip(axes[0], metrics):
        for (task, method), points in series.items():
            xs = [position[p["value"]] for p in points]
            if key == "frechet":
                ys = [float(p["frechet"]) if p["frechet"] else float("nan") for p in points]
                errors = None
            else:
                ys = [float(p[f"{key}_mean"]) for p in points]
                errors = [float(p[f"{key}_std"]) for p in points]
            name = method if len(set(t for t, _ in series)) == 1 else f"{task} {method}"
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name,
                          linestyle="--" if method == "naive" else "-")
        axis.set_xlabel(flag)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if numeric and args.log_x:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks(range(len(values)), values)
    axes[0][0].legend(fontsize=8)
    if args.title:
        figure.suptitle(args.title)
    figure.tight_layout()
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
