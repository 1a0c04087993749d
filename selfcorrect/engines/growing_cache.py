"""A Hugging Face DynamicCache that appends keys and values in place.

DynamicCache concatenates each layer's whole cache with the new position at every decode step:
a copy of [b, H, L, D] per layer per token (aten::cat was about 5% of a SmolLM2 rollout on a
CPU). Here each layer writes new positions into spare room at the end of a buffer and exposes
views of the filled part; the keys and values, and so every result, are the same.
"""

from __future__ import annotations

import functools

import torch

SPARE_POSITIONS = 64  # room added whenever a buffer fills: a 32-token attempt grows it at most once


def growing_cache():
    """An empty DynamicCache whose layers keep spare room for new positions; the plain one where
    this transformers version builds its layers another way (nothing else depends on which)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer and not cache.layers:
        cache.layer_class_to_replicate = _growing_layer_class()
    return cache


@functools.cache
def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """keys / values: views [b, H, filled, D] of buffers [b, H, capacity, D]."""

        room_k = room_v = None
        filled = 0

        def update(self, key_states, value_states, *args, **kwargs):
            # what DynamicLayer.lazy_initialization sets, whose signature varies across versions
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
            end = self.filled + key_states.shape[-2]
            if self.room_k is None or end > self.room_k.shape[-2]:
                self.room_k = with_room(self.room_k, key_states, self.filled, end + SPARE_POSITIONS)
                self.room_v = with_room(self.room_v, value_states, self.filled, end + SPARE_POSITIONS)
            self.room_k[:, :, self.filled:end] = key_states
            self.room_v[:, :, self.filled:end] = value_states
            self.filled = end
            self.keys, self.values = self.room_k[:, :, :end], self.room_v[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.room_k is not None:
                self.room_k, self.room_v = self.room_k[indices], self.room_v[indices]
                self.keys, self.values = self.room_k[:, :, :self.filled], self.room_v[:, :, :self.filled]

        def _not_kept_in_step(self, *args, **kwargs):
            # DynamicLayer's versions act on keys / values only and would leave the buffers
            # behind; the cached engine, this layer's one user, never calls them
            raise NotImplementedError("GrowingLayer keeps its buffers in step for update and "
                                      "batch_select_indices only")

        crop = reset = reorder_cache = batch_repeat_interleave = offload = prefetch = _not_kept_in_step

    return GrowingLayer


def with_room(old: torch.Tensor | None, like: torch.Tensor, filled: int, capacity: int) -> torch.Tensor:
    """A [b, H, capacity, D] buffer of like's dtype and device holding old's first `filled` positions."""
    room = like.new_empty(like.shape[0], like.shape[1], capacity, like.shape[3])
    if old is not None:
        room[:, :, :filled] = old[:, :, :filled]
    return room
