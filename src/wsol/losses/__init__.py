"""Loss terms shared by methods: entropy / KL-to-uniform terms, the extended log-barrier
and its schedule, region-size constraints. Functions take tensors and return tensors;
nothing here knows about a network."""

from wsol.losses.barrier import BarrierSchedule, extended_log_barrier
from wsol.losses.crf import crf_loss
from wsol.losses.entropy import (
    cross_entropy_to_uniform,
    entropy,
    kl_from_uniform,
    kl_to_uniform,
    negative_entropy,
    uncertainty_regularizer,
)
from wsol.losses.size import absolute_size_constraint, region_size, size_bounds_penalty, size_lower_barrier

__all__ = [
    "BarrierSchedule",
    "crf_loss",
    "absolute_size_constraint",
    "cross_entropy_to_uniform",
    "entropy",
    "extended_log_barrier",
    "kl_from_uniform",
    "kl_to_uniform",
    "negative_entropy",
    "region_size",
    "size_bounds_penalty",
    "size_lower_barrier",
    "uncertainty_regularizer",
]
