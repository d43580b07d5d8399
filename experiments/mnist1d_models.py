"""The MNIST-1D paper's models as Flax modules, importable without the study's flags.

``experiments.mnist1d`` trains them; ``experiments.benchmark_workloads`` measures them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np


def pytorch_init(fan_in: int) -> dict[str, Any]:
    r"""PyTorch's default ``Linear``/``Conv1d`` initialization, which the paper's models use.

    Kernel and bias both :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})` (``kaiming_uniform_(a=√5)``).
    """
    bound = 1.0 / np.sqrt(fan_in)

    def uniform(key: jax.Array, shape: tuple[int, ...], dtype: Any = np.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return {"kernel_init": uniform, "bias_init": uniform}


class PaperCNN(nn.Module):
    """MNIST-1D's CNN: 3 Conv1d of ``channels`` (kernels 5, 3, 3; stride 2; padding 1; ReLU), then a linear layer.

    ``dropout`` (0 in the paper) drops the flattened features before the linear layer. ``initializer``:
    ``"pytorch"`` (the paper's, ``pytorch_init``) or ``"flax"`` (Flax's defaults: LeCun normal, zero bias).
    """

    channels: int = 25
    n_out: int = 10
    dropout: float = 0.0
    initializer: str = "pytorch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        h = x[..., None]  # (m, 40, 1): length-major, one input channel
        for kernel in (5, 3, 3):
            init = pytorch_init(kernel * h.shape[-1]) if self.initializer == "pytorch" else {}
            h = nn.relu(nn.Conv(self.channels, (kernel,), strides=2, padding=1, **init)(h))
        h = h.reshape(h.shape[0], -1)
        if self.dropout > 0:
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.n_out, **(pytorch_init(h.shape[-1]) if self.initializer == "pytorch" else {}))(h)


class PaperResidualMLP(nn.Module):
    """MNIST-1D's MLP: ``h = relu(W1 x); h = h + relu(W2 h)``, then a linear layer (40-100-100-10).

    ``initializer`` as for ``PaperCNN``.
    """

    width: int = 100
    n_out: int = 10
    initializer: str = "pytorch"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def dense(features: int, fan_in: int) -> nn.Dense:
            return nn.Dense(features, **(pytorch_init(fan_in) if self.initializer == "pytorch" else {}))

        h = nn.relu(dense(self.width, x.shape[-1])(x))
        h = h + nn.relu(dense(self.width, self.width)(h))
        return dense(self.n_out, self.width)(h)
