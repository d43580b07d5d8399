"""The benchmark's peers: the same job written the way a JAX user and a PyTorch user write it.

- ``jax_user_program``: a JAX user's hyperparameter batch: one ``train(learning_rate, key)``
  function (He-initialized MLP, ``optax.adam(learning_rate)``, ``lax.scan`` over epochs and
  mini-batches with a fresh ``jax.random.permutation`` per epoch and the last, smaller mini-batch
  kept), then ``jax.jit(jax.vmap(train))`` over the learning rates and keys.
- ``torch_func_program``: PyTorch's model-ensembling recipe: ``torch.func.stack_module_state``
  over one ``nn.Sequential`` per config, ``vmap(grad(loss))`` through ``functional_call``, the
  same mini-batch for every model, and Adam written by hand over the stacked parameters (a
  per-model learning rate, which ``torch.optim.Adam`` cannot take).

Both train the benchmark's job (binary cross-entropy on one logit, ReLU hidden layers) and return
each run's final training cost and dev accuracy, so their numbers can be checked for sense.
Neither imports anything from deepopt's training code: they are what a user writes without it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def jax_user_program(
    layer_sizes: Sequence[int], batch_size: int, epochs: int, num_examples: int
) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """``jit(vmap(train))``: ``(learning_rates (C,), keys (C,), X, y, X_dev, y_dev) -> (final costs, dev accuracies)``."""
    import optax

    full_batches, rest = divmod(num_examples, batch_size)

    def init_params(key: jax.Array) -> list[dict[str, jax.Array]]:
        keys = jax.random.split(key, len(layer_sizes) - 1)
        return [
            {"W": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in), "b": jnp.zeros(n_out)}
            for k, n_in, n_out in zip(keys, layer_sizes[:-1], layer_sizes[1:])
        ]

    def forward(params: list[dict[str, jax.Array]], x: jax.Array) -> jax.Array:
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["W"] + layer["b"])
        return (x @ params[-1]["W"] + params[-1]["b"])[:, 0]

    def loss(params: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array) -> jax.Array:
        return optax.sigmoid_binary_cross_entropy(forward(params, x), y).mean()

    def train(
        learning_rate: jax.Array, key: jax.Array, X: jax.Array, y: jax.Array, X_dev: jax.Array, y_dev: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        init_key, shuffle_key = jax.random.split(key)
        params = init_params(init_key)
        optimizer = optax.adam(learning_rate)

        def step(carry: Any, batch: tuple[jax.Array, jax.Array]) -> tuple[Any, jax.Array]:
            params, opt_state = carry
            value, grads = jax.value_and_grad(loss)(params, *batch)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), value

        def epoch(carry: Any, epoch_key: jax.Array) -> tuple[Any, jax.Array]:
            order = jax.random.permutation(epoch_key, num_examples)
            Xs, ys = X[order], y[order]
            head = full_batches * batch_size
            batches = (Xs[:head].reshape(full_batches, batch_size, -1), ys[:head].reshape(full_batches, batch_size))
            carry, costs = jax.lax.scan(step, carry, batches)
            total = costs.sum() * batch_size
            if rest:  # the last, smaller mini-batch is kept
                carry, last = step(carry, (Xs[head:], ys[head:]))
                total = total + last * rest
            return carry, total / num_examples

        (params, _), costs = jax.lax.scan(
            epoch, (params, optimizer.init(params)), jax.random.split(shuffle_key, epochs)
        )
        dev_accuracy = jnp.mean((forward(params, X_dev) > 0) == (y_dev == 1))
        return costs[-1], dev_accuracy

    return jax.jit(jax.vmap(train, in_axes=(0, 0, None, None, None, None)))


def measure_jax_user(
    layer_sizes: Sequence[int],
    batch_size: int,
    epochs: int,
    learning_rates: np.ndarray,
    keys: jax.Array,
    train_set: Any,
    dev_set: Any,
    repeats: int,
) -> dict[str, Any]:
    """The JAX user's program over every (learning rate, key): the first call (trace, compile, run), then ``repeats`` calls."""
    m = len(train_set.y)
    program = jax_user_program(tuple(layer_sizes), min(batch_size, m), epochs, m)
    rates = jnp.asarray(np.repeat(learning_rates, len(keys)), jnp.float32)
    run_keys = jnp.concatenate([keys] * len(learning_rates))  # rate major, then seed: the sweep's order
    args = (rates, run_keys, jnp.asarray(train_set.X), jnp.asarray(train_set.y, jnp.float32),
            jnp.asarray(dev_set.X), jnp.asarray(dev_set.y))
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    first = time.perf_counter() - start
    timed = []
    for _ in range(repeats):
        start = time.perf_counter()
        costs, accuracies = jax.block_until_ready(program(*args))
        timed.append(time.perf_counter() - start)
    return {"runs": len(rates), "first_call_seconds": first, "repeat_seconds": timed,
            "final_costs": np.asarray(costs).tolist(), "dev_accuracies": np.asarray(accuracies).tolist()}


def torch_available() -> bool:
    """Whether PyTorch can be imported (the torch.func peer is measured only then)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def measure_torch_func(
    layer_sizes: Sequence[int],
    batch_size: int,
    epochs: int,
    learning_rates: np.ndarray,
    seeds: int,
    train_set: Any,
    dev_set: Any,
    repeats: int,
) -> dict[str, Any]:
    """PyTorch's ensembling recipe with a hand-written Adam: the first call, then ``repeats`` timed calls."""
    import torch
    from torch import nn
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    X = torch.tensor(np.array(train_set.X), dtype=torch.float32)
    y = torch.tensor(np.array(train_set.y), dtype=torch.float32)
    X_dev = torch.tensor(np.array(dev_set.X), dtype=torch.float32)
    y_dev = torch.tensor(np.array(dev_set.y), dtype=torch.float32)
    m = len(y)
    rates = torch.as_tensor(np.repeat(learning_rates, seeds), dtype=torch.float32)
    num_models = len(rates)

    def make_model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
            linear = nn.Linear(n_in, n_out)
            nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")  # He, as the other approaches
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def loss(params: dict, buffers: dict, base: nn.Module, xb: Any, yb: Any) -> Any:
        logits = functional_call(base, (params, buffers), (xb,))[:, 0]
        return nn.functional.binary_cross_entropy_with_logits(logits, yb)

    def one_call() -> tuple[np.ndarray, np.ndarray]:
        models = [make_model(i % seeds) for i in range(num_models)]
        params, buffers = stack_module_state(models)
        base = make_model(0).to("meta")
        step_grad = vmap(grad_and_value(lambda p, b, xb, yb: loss(p, b, base, xb, yb)), in_dims=(0, 0, None, None))
        first_moment = {name: torch.zeros_like(p) for name, p in params.items()}
        second_moment = {name: torch.zeros_like(p) for name, p in params.items()}
        beta1, beta2, eps, t = 0.9, 0.999, 1e-8, 0
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _ in range(epochs):
                order = torch.randperm(m, generator=generator)
                epoch_cost = torch.zeros(num_models)
                for begin in range(0, m, batch_size):
                    batch = order[begin : begin + batch_size]
                    grads, values = step_grad(params, buffers, X[batch], y[batch])
                    epoch_cost += values * len(batch) / m
                    t += 1
                    for name, p in params.items():
                        g = grads[name]
                        first_moment[name].mul_(beta1).add_(g, alpha=1 - beta1)
                        second_moment[name].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        m_hat = first_moment[name] / (1 - beta1**t)
                        v_hat = second_moment[name] / (1 - beta2**t)
                        lr = rates.view(-1, *([1] * (p.dim() - 1)))
                        p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
            logits = vmap(lambda p, b: functional_call(base, (p, b), (X_dev,))[:, 0])(params, buffers)
            accuracy = ((logits > 0) == (y_dev == 1)).float().mean(dim=1)
        return epoch_cost.numpy(), accuracy.numpy()

    start = time.perf_counter()
    one_call()
    first = time.perf_counter() - start
    timed = []
    for _ in range(repeats):
        start = time.perf_counter()
        costs, accuracies = one_call()
        timed.append(time.perf_counter() - start)
    return {"runs": num_models, "first_call_seconds": first, "repeat_seconds": timed, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "final_costs": costs.tolist(), "dev_accuracies": accuracies.tolist(),
            "steps_per_run": epochs * math.ceil(m / batch_size)}
