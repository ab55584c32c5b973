"""Learning: training a model (optax), predicting its gradient flow, its influence on training points, and attacks on its inputs.

- ``training``: full-batch/minibatch training, the linearized model and the NTK predictor;
- ``predict``: closed-form MSE gradient flow with a kernel, and the infinite ensemble, as neural-tangents' ``predict``;
- ``influence``: influence of training points through a kernel (pure kernel mathematics) and fitting a model for it;
- ``attacks``: FGSM, PGD and MIM perturbations of the inputs.
"""
