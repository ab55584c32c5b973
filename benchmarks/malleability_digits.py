"""Influence malleability on 10-class digits: 2L-ReLU vs MLP-Attn under FGSM, PGD and MIM.

    python benchmarks/malleability_digits.py [--epochs 500] [--steps 10] [--kernel empirical]

Setup (MATH.md §10), defaults chosen to fit ≈ 1–2 minutes on a 2-core CPU:

- data: scikit-learn's 8×8 digits through ``kernelattn.data.load("digits",
  n_train=1000, n_test=200, seed=0, normalize=False)`` — balanced subsets of
  raw [0, 1] pixels; the models re-normalize rows themselves, so the attacks
  act on pixels;
- models: width m = 1024, NTK parameterization, fixed ±1 readout, trained
  with the paper's optimizer (Adam 1e-3, batch 128, L2 1e-3, cross-entropy)
  for ``--epochs`` = 500 epochs (the paper's count; ~10 s per model here);
- influence: exact leave-one-out, ridge λ = 1e-3, one-vs-rest ±1 targets,
  on each test point's true class, from the empirical NTK of the trained
  network (``--kernel infinite`` for the closed form);
- attacks: ε = 0.3, maximizing the trained network's cross-entropy on the
  whole training set, gradients through the attention over the perturbed
  set; PGD and MIM with ``--steps`` = 10 (PGD: step 2.5ε/10 = 0.075, random
  start; MIM: step ε/10 = 0.03, μ = 1);
- interventions (``--interventions``): "adversarial" (every training point
  perturbed: the main table), plus "transformed" (only the top-10 % most
  influential points perturbed) and "curated" (those points removed; no
  attack);
- metrics: flip rate among the top-10 % |I| training points, Spearman ρ and
  top-10 % overlap, mean ± std over the 200 test points.

One clean fit per model is shared by all rows. Prints the table and the wall
time.
"""

from __future__ import annotations

import argparse
import time

import jax


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--epsilon", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--ridge", type=float, default=1e-3)
    parser.add_argument("--kernel", choices=("empirical", "infinite"), default="empirical")
    parser.add_argument("--target", choices=("model", "kernel"), default="model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--interventions", nargs="+", choices=("adversarial", "transformed", "curated"),
        default=["adversarial", "transformed", "curated"],
    )
    args = parser.parse_args(argv)

    jax.config.update("jax_enable_x64", True)
    from kernelattn.data import load
    from kernelattn.experiments.malleability.api import malleability_sweep

    start = time.perf_counter()
    data = load("digits", n_train=args.n_train, n_test=args.n_test, seed=args.seed, normalize=False, target="labels")

    def progress(report):
        print(
            f"  done {report.model:8s} {report.intervention:11s} {report.attack:4s} in {report.seconds:5.1f} s"
            + (
                f" (attack loss {report.perturbation['loss_clean']:.4f} -> {report.perturbation['loss_adv']:.4f}, "
                f"max|dX| = {report.perturbation['linf']:.3f})" if "loss_adv" in report.perturbation else ""
            ),
            flush=True,
        )

    reports = malleability_sweep(
        data,
        models=("relu", "mlp-attn"),
        attacks=("fgsm", "pgd", "mim"),
        epsilons=(args.epsilon,),
        interventions=tuple(args.interventions),
        width=args.width,
        tau=args.tau,
        ridge=args.ridge,
        seed=args.seed,
        kernel=args.kernel,
        train_config={"epochs": args.epochs},
        attack_config={"steps": args.steps, "target": args.target},
        progress=progress,
    )
    wall = time.perf_counter() - start

    names = {"relu": "2L-ReLU", "mlp-attn": "MLP-Attn"}
    print()
    print(
        f"Influence malleability, digits (10 classes), n = {args.n_train}, n* = {args.n_test}, m = {args.width}, "
        f"eps = {args.epsilon}, tau = {args.tau}, ridge = {args.ridge}, kernel = {args.kernel}, "
        f"epochs = {args.epochs}, steps = {args.steps}, attack target = {args.target}"
    )
    header = (
        f"{'model':9s} {'intervention':12s} {'attack':6s} {'flip rate':>15s} {'spearman rho':>15s} "
        f"{'top-k overlap':>15s}"
    )
    print(header)
    print("-" * len(header))
    order = {name: i for i, name in enumerate(("adversarial", "transformed", "curated"))}
    for r in sorted(reports, key=lambda r: (order[r.intervention], r.model != "relu")):
        print(
            f"{names[r.model]:9s} {r.intervention:12s} {r.attack.upper():6s} "
            f"{r.flip_rate:7.3f} ± {r.flip_rate_std:5.3f} "
            f"{r.spearman:7.3f} ± {r.spearman_std:5.3f} "
            f"{r.topk_overlap:7.3f} ± {r.topk_overlap_std:5.3f}"
        )
    by = {(r.model, r.intervention, r.attack): r for r in reports}
    print()
    attack_order = {"fgsm": 0, "pgd": 1, "mim": 2, "none": 3}
    pairs = sorted({(r.intervention, r.attack) for r in reports}, key=lambda k: (order[k[0]], attack_order[k[1]]))
    for intervention, attack in pairs:
        relu, attn = by[("relu", intervention, attack)], by[("mlp-attn", intervention, attack)]
        ratio = attn.flip_rate / relu.flip_rate if relu.flip_rate > 0 else float("inf")
        print(f"{intervention:12s} {attack.upper():4s}: flip rate MLP-Attn / 2L-ReLU = {ratio:.2f}")
    print(f"\nwall time: {wall:.1f} s")


if __name__ == "__main__":
    main()
