"""Small text classifiers as pure ``(init, apply)`` pairs built on the table functions.

Every model keeps its embedding table at ``params["embed"]`` (``{"table": f32[V, D]}``) and
reads it only through ``embedlab.lookup`` / ``embedlab.bag`` with ``padding_id=0``, so the
row-sparse train step can hand it a gathered local table instead (``embedlab.sparse``).

  >>> import jax, jax.numpy as jnp
  >>> from embedlab.config import ModelConfig
  >>> model = make_model(ModelConfig(name="bag", features=16), num_embeddings=100, num_classes=3)
  >>> params = model.init(jax.random.key(0))
  >>> model.apply(params, jnp.ones((4, 7), jnp.int32)).shape
  (4, 3)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from embedlab import tables

PADDING_ID = 0


class Model(NamedTuple):
  """A model: ``init(key) -> params``; ``apply(params, ids, *, train=False, rng=None) -> logits``;
  ``stages(batch, seq_len) -> [(name, shape), ...]`` describes what flows through it."""

  init: Callable[..., Any]
  apply: Callable[..., jax.Array]
  stages: Callable[[int, int], list[tuple[str, tuple[int, ...]]]]


def _check_ids_rank(ids, where):
  if jnp.ndim(ids) != 2:
    raise ValueError(f"{where}: ids must be 2-D [batch, seq_len], got shape {jnp.shape(ids)}; "
                     "add a batch axis with ids[None] or reshape to (batch, seq_len).")


def _dense_init(key, fan_in, fan_out):
  w = jax.nn.initializers.lecun_normal()(key, (fan_in, fan_out), jnp.float32)
  return {"w": w, "b": jnp.zeros((fan_out,), jnp.float32)}


def _dense(p, x):
  return x @ p["w"].astype(x.dtype) + p["b"].astype(x.dtype)


def _dropout(x, rate, train, rng):
  if not train or rate == 0.0:
    return x
  if rng is None:
    raise ValueError("model.apply: train=True with dropout needs an rng key.")
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _embed_init(cfg, key, num_embeddings, pretrained):
  init = pretrained if pretrained is not None else cfg.init
  return tables.init_table(key, num_embeddings, cfg.features, init=init,
                           padding_id=PADDING_ID, scale=cfg.init_scale)


def _compute_dtype(cfg):
  return jnp.dtype(cfg.compute_dtype)


def bag_model(cfg, num_embeddings: int, num_classes: int, pretrained=None, *,
              oob: str = "error") -> Model:
  """fastText: the mean of word (and hashed n-gram) embeddings, an optional hidden layer, and
  a linear classifier (Joulin et al. 2017)."""
  dtype = _compute_dtype(cfg)

  def init(key):
    k_embed, k_hidden, k_out = jax.random.split(key, 3)
    params = {"embed": _embed_init(cfg, k_embed, num_embeddings, pretrained)}
    width = cfg.features
    if cfg.hidden:
      params["hidden"] = _dense_init(k_hidden, width, cfg.hidden)
      width = cfg.hidden
    params["out"] = _dense_init(k_out, width, num_classes)
    return params

  def apply(params, ids, *, train=False, rng=None):
    x = tables.bag(params["embed"], ids, mode=cfg.pooling, padding_id=PADDING_ID,
                   compute_dtype=dtype, oob=oob)
    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    if cfg.hidden:
      x = jax.nn.relu(_dense(params["hidden"], x))
    x = _dropout(x, cfg.dropout, train, keys[1])
    return _dense(params["out"], x).astype(jnp.float32)

  def stages(batch, seq_len):
    out = [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, cfg.features)),
           (f"pooled ({cfg.pooling})", (batch, cfg.features))]
    if cfg.hidden:
      out.append(("hidden", (batch, cfg.hidden)))
    return out + [("logits", (batch, num_classes))]

  return Model(init, apply, stages)


def cnn_model(cfg, num_embeddings: int, num_classes: int, pretrained=None, *,
              oob: str = "error") -> Model:
  """Kim (2014): convolutions of several widths over the embeddings, max-over-time pooling,
  dropout, and a linear classifier."""
  dtype = _compute_dtype(cfg)
  widths = tuple(cfg.filter_widths)

  def init(key):
    keys = jax.random.split(key, len(widths) + 2)
    params = {"embed": _embed_init(cfg, keys[0], num_embeddings, pretrained)}
    for i, w in enumerate(widths):
      kernel = jax.nn.initializers.he_uniform(in_axis=(0, 1), out_axis=2)(
          keys[i + 1], (w, cfg.features, cfg.num_filters), jnp.float32)
      params[f"conv{w}"] = {"w": kernel, "b": jnp.zeros((cfg.num_filters,), jnp.float32)}
    params["out"] = _dense_init(keys[-1], cfg.num_filters * len(widths), num_classes)
    return params

  def apply(params, ids, *, train=False, rng=None):
    _check_ids_rank(ids, "cnn_model.apply")
    x = tables.lookup(params["embed"], ids, padding_id=PADDING_ID, compute_dtype=dtype, oob=oob)
    lengths = jnp.maximum((ids != PADDING_ID).sum(1), 1)
    pooled = []
    for w in widths:
      p = params[f"conv{w}"]
      h = jax.lax.conv_general_dilated(x, p["w"].astype(dtype), (1,), [(0, max(w - 1, 0))],
                                       dimension_numbers=("NWC", "WIO", "NWC"))
      h = jax.nn.relu(h + p["b"].astype(dtype))
      # windows starting past the last real token (beyond one window) see only padding
      start_ok = jnp.arange(h.shape[1])[None, :] < jnp.maximum(lengths - w + 1, 1)[:, None]
      pooled.append(jnp.max(jnp.where(start_ok[..., None], h, 0), axis=1))
    x = jnp.concatenate(pooled, axis=-1)
    x = _dropout(x, cfg.dropout, train, rng)
    return _dense(params["out"], x).astype(jnp.float32)

  def stages(batch, seq_len):
    n = cfg.num_filters
    return [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, cfg.features))] + [
        (f"conv width {w} (relu)", (batch, seq_len, n)) for w in widths] + [
            ("max over time, concatenated", (batch, n * len(widths))),
            ("logits", (batch, num_classes))]

  return Model(init, apply, stages)


def _lstm_init(key, d_in, hidden):
  k1, k2 = jax.random.split(key)
  return {"wi": jax.nn.initializers.lecun_normal()(k1, (d_in, 4 * hidden), jnp.float32),
          "wh": jax.nn.initializers.orthogonal()(k2, (hidden, 4 * hidden), jnp.float32),
          "b": jnp.zeros((4 * hidden,), jnp.float32).at[hidden:2 * hidden].set(1.0)}


def _lstm_scan(p, x_BxLxD, mask_BxL):
  """Runs an LSTM over time; at masked steps the state is carried unchanged."""
  batch = x_BxLxD.shape[0]
  hidden = p["wh"].shape[0]
  dtype = x_BxLxD.dtype
  xw = x_BxLxD @ p["wi"].astype(dtype) + p["b"].astype(dtype)

  def step(carry, inputs):
    h, c = carry
    xw_t, m_t = inputs
    z = xw_t + h @ p["wh"].astype(dtype)
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
    m = m_t[:, None]
    h, c = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
    return (h, c), h

  init = (jnp.zeros((batch, hidden), dtype), jnp.zeros((batch, hidden), dtype))
  _, hs = jax.lax.scan(step, init, (jnp.swapaxes(xw, 0, 1), jnp.swapaxes(mask_BxL, 0, 1)))
  return jnp.swapaxes(hs, 0, 1)


def _reverse_within_length(x_BxL, lengths_B):
  """Reverses each row's first ``length`` entries (padding stays at the end)."""
  positions = jnp.arange(x_BxL.shape[1])[None, :]
  index = jnp.where(positions < lengths_B[:, None], lengths_B[:, None] - 1 - positions, positions)
  return jnp.take_along_axis(x_BxL, index.reshape(index.shape + (1,) * (x_BxL.ndim - 2)), axis=1)


def bilstm_model(cfg, num_embeddings: int, num_classes: int, pretrained=None, *,
                 oob: str = "error") -> Model:
  """A bidirectional LSTM with attention pooling and an MLP head (the flax SST-2 example)."""
  dtype = _compute_dtype(cfg)
  hidden = cfg.lstm_hidden

  def init(key):
    keys = jax.random.split(key, 6)
    return {"embed": _embed_init(cfg, keys[0], num_embeddings, pretrained),
            "forward": _lstm_init(keys[1], cfg.features, hidden),
            "backward": _lstm_init(keys[2], cfg.features, hidden),
            "attention": {"proj": _dense_init(keys[3], 2 * hidden, hidden),
                          "v": jax.nn.initializers.normal(0.1)(keys[4], (hidden,))},
            "out": _dense_init(keys[5], 2 * hidden, num_classes)}

  def apply(params, ids, *, train=False, rng=None):
    _check_ids_rank(ids, "bilstm_model.apply")
    x = tables.lookup(params["embed"], ids, padding_id=PADDING_ID, compute_dtype=dtype, oob=oob)
    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    x = _dropout(x, cfg.dropout, train, keys[0])
    mask = ids != PADDING_ID
    lengths = mask.sum(1)
    fwd = _lstm_scan(params["forward"], x, mask)
    bwd = _lstm_scan(params["backward"], _reverse_within_length(x, lengths), mask)
    h = jnp.concatenate([fwd, _reverse_within_length(bwd, lengths)], axis=-1)
    att = params["attention"]
    scores = jnp.tanh(_dense(att["proj"], h)) @ att["v"].astype(dtype)
    scores = jnp.where(mask, scores.astype(jnp.float32), -1e9)
    weights = jax.nn.softmax(scores, axis=1) * mask.any(1, keepdims=True)
    pooled = jnp.einsum("bl,blh->bh", weights.astype(dtype), h)
    pooled = _dropout(pooled, cfg.dropout, train, keys[1])
    return _dense(params["out"], pooled).astype(jnp.float32)

  def stages(batch, seq_len):
    return [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, cfg.features)),
            ("bilstm states", (batch, seq_len, 2 * hidden)),
            ("attention-pooled", (batch, 2 * hidden)), ("logits", (batch, num_classes))]

  return Model(init, apply, stages)


MODELS = {"bag": bag_model, "cnn": cnn_model, "bilstm": bilstm_model}


def make_model(cfg, num_embeddings: int, num_classes: int, pretrained=None, *,
               oob: str = "error") -> Model:
  """The model named by ``cfg.name`` (a key of ``MODELS``).

  ``oob`` is the id policy of the model's table reads (``embedlab.lookup``): ``"error"`` checks
  every call; the train loop validates the whole encoded dataset once up front and passes
  ``"clip"`` so the jitted steps carry no per-call host callback.
  """
  if cfg.name not in MODELS:
    raise ValueError(f"model.name={cfg.name!r} is not a known model; choose one of "
                     f"{', '.join(MODELS)}.")
  return MODELS[cfg.name](cfg, num_embeddings, num_classes, pretrained, oob=oob)
