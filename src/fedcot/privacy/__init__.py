"""Privacy layer: units, embedding space, mechanisms, the Perturber front door, accounting,
sensitivity detection and attacks. See docs/privacy.md for the guarantees."""

from fedcot.privacy.accountant import PrivacyAccountant
from fedcot.privacy.mechanisms import (
    ExponentialMechanism,
    NumericMechanism,
    PunctuationMechanism,
    RantextMechanism,
    TopKMechanism,
)
from fedcot.privacy.perturb import STRATEGIES, Perturbation, PerturbConfig, Perturber
from fedcot.privacy.space import EmbeddingSpace
from fedcot.privacy.units import Unit, join_units, split_units

__all__ = [
    "STRATEGIES",
    "EmbeddingSpace",
    "ExponentialMechanism",
    "NumericMechanism",
    "PerturbConfig",
    "Perturbation",
    "Perturber",
    "PrivacyAccountant",
    "PunctuationMechanism",
    "RantextMechanism",
    "TopKMechanism",
    "Unit",
    "join_units",
    "split_units",
]
