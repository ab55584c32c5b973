"""The schema of malleability specs: every top-level key declared once (:class:`KeySpec`: its check,
default and meaning), and the model options; :mod:`kernelattn.experiments.specs.malleability` validates
with it and the docs' spec page lists it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kernelattn.errors import InputValueError
from kernelattn.experiments.specs.checks import (
    check_bool,
    check_choice,
    check_int,
    check_real,
    check_str,
    int_text,
    nullable,
    real_text,
)
from kernelattn.experiments.specs.sweep import DTYPES, PRECISIONS
from kernelattn.registry import REQUIRED

__all__ = [
    "MALLEABILITY_HEAD_KEYS",
    "MALLEABILITY_KEYS",
    "MALLEABILITY_KEYSPECS",
    "MALLEABILITY_MODEL_OPTIONS",
    "MALLEABILITY_SCHEMA",
    "MAX_MALLEABILITY_SEED_COUNT",
    "MAX_MALLEABILITY_WIDTH",
    "MODEL_OPTION_CHECKS",
    "PLURAL_KEYS",
    "SINGULAR_KEYS",
    "VARIANT_FIXED_KEYS",
    "KeySpec",
    "malleability_choices",
]

#: Largest width of a malleability spec: the models' limit (kernelattn.models.MAX_WIDTH); whether it
#: fits in memory is planned before any work (kernelattn.kernels.memory).
MAX_MALLEABILITY_WIDTH = 2**31
#: Largest seed count of a malleability spec's ``"seeds": n`` (seeds 0..n-1).
MAX_MALLEABILITY_SEED_COUNT = 100_000


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One top-level key of a malleability spec: the declaration the validator checks values with and
    takes defaults from, and the docs' spec page lists (so the two cannot drift apart).

    Attributes:
      name: the key; a list key's plural spelling (``"widths"``).
      type: how one value is checked: ``"integer"`` or ``"number"`` (within ``minimum``/``maximum``),
        ``"bool"``, ``"choice"`` (one of ``choices``), ``"name"`` (a string, one of ``choices`` in any
        case); ``""``: by the validator's own code, as ``type_text`` says.
      default: the value the parsed spec gets when the key is absent (a list key: the list);
        ``REQUIRED``: the spec must give it (``name``, ``kind``, ``description`` and ``variants`` are
        not part of a plan: their default is the value when absent).
      doc: what the key means.
      singular: a list key's one-value spelling (``"width"``): a spec gives one or the other.
      parsed: the key of the parsed dict (a plan of ``MalleabilitySpec.plans``) it fills.
      choices: the allowed values: a tuple, or the name of a group of :func:`malleability_choices`
        (defined in modules that load JAX, so resolved on first use).
      minimum, maximum, strict: bounds of an ``"integer"`` or ``"number"`` (``strict``: > minimum).
      nullable: ``null`` is accepted too (and parsed as ``None``).
      allow_empty: a list key that may be ``[]``.
      type_text: what a value is, in words, for a key of ``type`` ``""``.
    """

    name: str
    type: str
    default: Any
    doc: str
    singular: str | None = None
    parsed: str | None = None
    choices: str | tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    strict: bool = False
    nullable: bool = False
    allow_empty: bool = False
    type_text: str = ""

    def allowed(self, choices: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
        """The allowed values (``choices``: :func:`malleability_choices`, resolved when omitted)."""
        if isinstance(self.choices, str):
            return tuple((malleability_choices() if choices is None else choices)[self.choices])
        if self.choices is None:
            raise InputValueError(f"malleability spec key {self.name!r} declares no choices")
        return self.choices

    def int_bounds(self) -> tuple[int | None, int | None]:
        """``(minimum, maximum)`` of an ``"integer"`` key, as ints."""
        low, high = self.minimum, self.maximum
        return None if low is None else int(low), None if high is None else int(high)

    def text(self, choices: Mapping[str, Sequence[str]] | None = None) -> str:
        """What one value is, in the words of the validator's message (``"an integer >= 1"``)."""
        if self.type == "integer":
            return int_text(*self.int_bounds())
        if self.type == "number":
            return real_text(self.minimum, self.strict, self.maximum)
        if self.type == "bool":
            return "true or false"
        if self.type in ("choice", "name"):
            return f"one of {list(self.allowed(choices))}"
        return self.type_text

    def check(self, value: Any, path: str, choices: Mapping[str, Sequence[str]] | None = None) -> Any:
        """One value checked and normalized (a list key: one item), or a :class:`SpecError`."""
        if value is None and self.nullable:
            return None
        if self.type == "integer":
            minimum, maximum = self.int_bounds()
            return check_int(value, path, minimum=minimum, maximum=maximum)
        if self.type == "number":
            return check_real(value, path, minimum=self.minimum, strict=self.strict, maximum=self.maximum)
        if self.type == "bool":
            return check_bool(value, path)
        if self.type == "choice":
            return check_choice(value, path, self.allowed(choices))
        if self.type == "name":
            return check_choice(check_str(value, path).lower(), path, self.allowed(choices))
        raise InputValueError(f"malleability spec key {self.name!r} is checked by the validator's own code")


#: The top-level keys of a malleability spec (format: ``kernelattn.experiments.malleability.run_malleability_spec``),
#: in the order of the docs; :func:`parse_malleability_spec` checks them and takes their defaults from here.
MALLEABILITY_SCHEMA: tuple[KeySpec, ...] = (
    KeySpec(
        "name",
        "",
        None,
        "the store's name (the CLI's default: the file's stem)",
        type_text="a store name (one directory name: [A-Za-z0-9_.-]+)",
    ),
    KeySpec("kind", "", None, "the spec's kind (optional)", type_text='"malleability"'),
    KeySpec("description", "", "", "free text", type_text="a string"),
    KeySpec(
        "datasets",
        "",
        REQUIRED,
        "the datasets: entries as in a sweep spec's datasets (a label and a "
        "target are not part of the cell; normalize defaults to false)",
        singular="dataset",
        parsed="datasets",
        type_text='a dataset entry ({"name": ..., options})',
    ),
    KeySpec(
        "models",
        "",
        ("mlp-attn",),
        'the models: a name (aliases accepted) or {"name": ..., options}',
        singular="model",
        parsed="models",
        choices="models",
        type_text='a model name or {"name": ..., options} entry',
    ),
    KeySpec(
        "widths",
        "integer",
        (1024,),
        "the network widths m",
        singular="width",
        parsed="widths",
        minimum=1,
        maximum=MAX_MALLEABILITY_WIDTH,
    ),
    KeySpec(
        "seeds",
        "integer",
        (0,),
        f"the network seeds, or a count n for seeds 0..n-1 (1 <= n <= {MAX_MALLEABILITY_SEED_COUNT:,}); distinct",
        singular="seed",
        parsed="seeds",
        minimum=0,
        maximum=2**31 - 1,
    ),
    KeySpec(
        "kernel",
        "",
        {},
        "the head's options (readout, sigma_w, sigma_b, sigma_a)",
        parsed="head",
        type_text="an object",
    ),
    KeySpec("training", "", {}, "kernelattn.TrainConfig fields", parsed="training", type_text="an object"),
    KeySpec(
        "training_modes",
        "choice",
        ("standard",),
        "how the networks are trained",
        singular="training_mode",
        parsed="modes",
        choices="modes",
    ),
    KeySpec(
        "at_epsilon",
        "number",
        0.3,
        'the radius of PGD adversarial training ("pgd-at")',
        parsed="at_epsilon",
        minimum=0.0,
    ),
    KeySpec(
        "influence_kernels",
        "choice",
        ("empirical",),
        "the kernels the influence scores are computed with",
        singular="influence_kernel",
        parsed="kernels",
        choices="kernels",
    ),
    KeySpec("influence", "choice", "loo", "the influence method", parsed="influence", choices="influence"),
    KeySpec(
        "targets", "choice", "pm1", "the target encoding of the kernel regression", parsed="targets", choices="targets"
    ),
    KeySpec("ridge", "number", 1e-3, "the ridge of the kernel regression", parsed="ridge", minimum=0.0, strict=True),
    KeySpec(
        "tau",
        "number",
        0.1,
        "τ: the top-τ training points are the ⌈τ n⌉ of largest |influence| (flip "
        "rate, top-k overlap, transformed and curated interventions)",
        parsed="tau",
        minimum=0.0,
        strict=True,
        maximum=1.0,
    ),
    KeySpec(
        "retrain",
        "bool",
        False,
        "also retrain the network on the perturbed data (from the same initialization and keys)",
        parsed="retrain",
    ),
    KeySpec(
        "attacks", "name", ("pgd",), "the attacks (any case)", singular="attack", parsed="attacks", choices="attacks"
    ),
    KeySpec("epsilons", "number", (0.3,), "the attacks' radii", singular="epsilon", parsed="epsilons", minimum=0.0),
    KeySpec(
        "interventions",
        "choice",
        ("adversarial",),
        "what is perturbed",
        singular="intervention",
        parsed="interventions",
        choices="interventions",
    ),
    KeySpec(
        "attack_targets",
        "choice",
        ("model",),
        'the loss attacked (default: attack_config\'s target, else "model")',
        parsed="attack_targets",
        choices="attack_targets",
    ),
    KeySpec(
        "attack_config",
        "",
        {},
        "kernelattn.AttackConfig fields (its target: the default of attack_targets)",
        parsed="attack_config",
        type_text="an object",
    ),
    KeySpec(
        "null_baselines",
        "choice",
        ("seed", "order"),
        "the null baselines: no perturbation, refit with other keys ([] for none)",
        parsed="nulls",
        choices="nulls",
        allow_empty=True,
    ),
    KeySpec("dtype", "choice", "float64", "the dtype of the networks and kernels", parsed="dtype", choices=DTYPES),
    KeySpec(
        "precision",
        "choice",
        None,
        "the matmul precision (null: the policy in force, CLI --precision)",
        parsed="precision",
        choices=PRECISIONS,
        nullable=True,
    ),
    KeySpec(
        "variants",
        "",
        None,
        "variants of the spec, run together (see malleability_variants)",
        type_text='a list of {"label": ..., overrides} objects',
    ),
)
MALLEABILITY_KEYSPECS = {key.name: key for key in MALLEABILITY_SCHEMA}
#: Every key a malleability spec allows (a list key's plural and singular spellings).
MALLEABILITY_KEYS = tuple(k for key in MALLEABILITY_SCHEMA for k in (key.name, key.singular) if k)
#: Keys a variant may not override (they name the spec); a variant adds its "label" and may set "n_train".
VARIANT_FIXED_KEYS = ("name", "kind", "description", "variants")
#: Plural key → its singular spelling (one value); a spec gives one or the other.
PLURAL_KEYS = {key.name: key.singular for key in MALLEABILITY_SCHEMA if key.singular}
SINGULAR_KEYS = {v: k for k, v in PLURAL_KEYS.items()}
#: The head options of a malleability spec's "kernel" section (the network, not how Θ is computed).
MALLEABILITY_HEAD_KEYS = ("readout", "sigma_w", "sigma_b", "sigma_a")
MALLEABILITY_MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "relu": ("name", "sigma_w", "sigma_b", "sigma_a", "train_readout"),
    "mlp-attn": (
        "name",
        "depth",
        "rank",
        "constant_term",
        "normalize",
        "sigma_w",
        "sigma_b",
        "sigma_a",
        "train_readout",
    ),
}
MODEL_OPTION_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "depth": lambda v, p: check_int(v, p, minimum=1),
    "rank": nullable(lambda v, p: check_int(v, p, minimum=1)),
    "constant_term": check_bool,
    "normalize": check_bool,
    "sigma_w": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "sigma_b": lambda v, p: check_real(v, p, minimum=0.0),
    "sigma_a": lambda v, p: check_real(v, p, minimum=0.0, strict=True),
    "train_readout": check_bool,
}


def malleability_choices() -> dict[str, tuple[str, ...]]:
    """The allowed values of a malleability spec's keys by group (``KeySpec.choices`` names one), from the
    modules that define them (imported on first use: they load JAX)."""
    # Deferred: these modules load JAX (and the malleability runner imports this package).
    from kernelattn.experiments.malleability import experiment
    from kernelattn.learning import adversarial, attacks, fitting, influence, model_influence, training

    return {
        "attacks": attacks.ATTACKS,
        "attack_targets": attacks.ATTACK_TARGETS,
        "kernels": model_influence.KERNELS,
        "ridge_kernels": model_influence.RIDGE_KERNELS,
        "influence": influence.INFLUENCE_METHODS,
        "targets": influence.TARGET_ENCODINGS,
        "models": fitting.SUPPORTED_MODELS,
        "interventions": experiment.INTERVENTIONS,
        "nulls": experiment.NULL_KINDS,
        "modes": adversarial.TRAININGS,
        "losses": training.LOSSES,
        "decay_modes": training.WEIGHT_DECAY_MODES,
        "binary_outputs": training.BINARY_OUTPUTS,
    }
