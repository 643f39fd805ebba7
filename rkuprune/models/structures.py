"""What can be pruned in each decoder layer, and what each unit costs in parameters.

Made by an adapter from the model in hand; consumed by scorers (which units exist), allocators
(what a unit costs) and sparsity accounting. All counts are for decoder-layer linear layers,
biases included (docs/design.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerStructure:
    """Sizes of one decoder layer and the parameter cost of each prunable unit."""

    index: int
    hidden_size: int
    head_dim: int
    num_q_heads: int
    num_kv_heads: int
    intermediate_size: int
    qkv_bias: bool = False
    o_bias: bool = False
    gate_up_bias: bool = False
    down_bias: bool = False

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_q_heads // self.num_kv_heads

    def kv_of(self, q_head: int) -> int:
        """The KV head a query head reads from."""
        return q_head // self.group_size

    @property
    def q_head_cost(self) -> int:
        """Parameters of one query head: its rows of q (and bias) and its columns of o."""
        return self.head_dim * self.hidden_size * 2 + (self.head_dim if self.qkv_bias else 0)

    @property
    def kv_head_cost(self) -> int:
        """Parameters of one KV head alone: its rows of k and v (and biases)."""
        return 2 * (self.head_dim * self.hidden_size + (self.head_dim if self.qkv_bias else 0))

    @property
    def channel_cost(self) -> int:
        """Parameters of one MLP channel: a row of gate and up, a column of down (and gate/up biases)."""
        return 3 * self.hidden_size + (2 if self.gate_up_bias else 0)

    @property
    def fixed_cost(self) -> int:
        """Parameters no unit owns: output biases of o and down."""
        return self.hidden_size * (int(self.o_bias) + int(self.down_bias))

    def params(self, q_heads: int, kv_heads: int, channels: int) -> int:
        """Linear parameters of this layer when it keeps the given numbers of units."""
        return (
            q_heads * self.q_head_cost + kv_heads * self.kv_head_cost + channels * self.channel_cost + self.fixed_cost
        )

    @property
    def dense_params(self) -> int:
        return self.params(self.num_q_heads, self.num_kv_heads, self.intermediate_size)


@dataclass(frozen=True)
class Structures:
    """Per-layer structures of a model, in original layer numbering."""

    layers: tuple[LayerStructure, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerStructure:
        return self.layers[index]

    @property
    def prunable_params(self) -> int:
        return sum(layer.dense_params for layer in self.layers)
