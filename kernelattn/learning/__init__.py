"""Learning: training a model (optax), predicting its gradient flow, its influence on training points, and attacks
on its inputs.

In import order (each module imports only those above it):

- ``training``: full-batch/minibatch training, the linearized model and the NTK predictor;
- ``predict``: closed-form MSE gradient flow with a kernel, and the infinite ensemble, as neural-tangents' ``predict``;
- ``attacks``: FGSM, PGD and MIM perturbations of the inputs;
- ``influence``: influence of training points on kernel ridge predictions (pure kernel mathematics), top-k helpers;
- ``attribution``: TracIn, grad-dot / grad-cos, representer points and TRAK from any model's per-example gradients;
- ``malleability_metrics``: how far one influence matrix moved from another (flip rate, Spearman ρ, Pearson r,
  top-k overlap);
- ``fitting``: validated data, the model as a function of raw pixels, its training and training health;
- ``attribution_truth``: estimators scored against exact and brute-force (refit, retrained) leave-one-out;
- ``adversarial``: PGD adversarial training, and fitting in either training mode;
- ``model_attribution``: a trained network (a kernelattn head or any Flax module) seen by its gradients;
- ``model_influence``: the kernels and influence of a fitted model, ``FitOptions`` and ``influence`` from data.
"""
