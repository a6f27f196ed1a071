"""Small text classifiers as pure ``(init, apply)`` pairs built on the table functions.

Every model keeps its embedding at ``params["embed"]`` and reads it only through its
``Embedder`` (``make_embedder``), with ``padding_id=0``. ``table`` names a table variant of the
registry ``embedlab.core.variants.TABLES`` (the plain table, hashing trick, hash embeddings,
quotient-remainder, factorized), so an experiment switches with one setting. Where the variant
has a row-indexed ``table`` (``Spec.row_sparse``), the row-sparse train step hands the model a
gathered local table instead and passes ``rows=True`` (``embedlab.core.localize``).

Models take plain arguments: an ``Embedder`` and their own options (``registry.MODELS`` lists
the models and the options each reads); ``embedlab.run.build`` turns a config into them.

  >>> import jax, jax.numpy as jnp
  >>> embedder = make_embedder(100, 16)
  >>> model = make_model("bag", embedder, num_classes=3, pooling="mean")
  >>> params = model.init(jax.random.key(0))
  >>> model.apply(params, jnp.ones((4, 7), jnp.int32)).shape
  (4, 3)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from embedlab.core import tables
from embedlab.core import variants
from embedlab.core.variants import contract
from embedlab.models import registry

PADDING_ID = 0


class Embedder(NamedTuple):
  """How a model holds and reads ``params["embed"]``: a table variant
  (``embedlab.core.variants.contract.TableVariant``) with the model's settings bound.

  ``init(key) -> embed params``; ``lookup(embed, ids, *, rows=False) -> [..., D]`` and
  ``bag(embed, ids, mode, *, rows=False, segment_ids=None, num_bags=None) -> [B, D]`` (padded
  bags ``[B, L]``, or ragged ones as ``embedlab.bag``'s) read ids ``0..V-1`` (padding id 0 gives
  zero vectors and gradients). ``rows(ids)`` maps ids to rows of ``embed["table"]`` (None where
  the variant has no such table: hash embeddings, quotient-remainder); with ``rows=True`` the ids
  given are already such rows, e.g. those of the row-sparse step's local table. ``variant`` is
  the table variant itself (``project``, ``describe``).
  """

  init: Callable[..., Any]
  lookup: Callable[..., jax.Array]
  bag: Callable[..., jax.Array]
  rows: Callable[[Any], jax.Array] | None
  kind: str
  variant: contract.TableVariant | None = None
  features: int = 0  # the width of a looked-up vector
  dtype: Any = jnp.float32  # the dtype vectors are computed in
  max_norm: float = 0.0  # each looked-up row renormalized to at most this norm (0: off)
  num_embeddings: int = 0  # the ids it reads: 0..num_embeddings-1


class Model(NamedTuple):
  """A model: ``init(key) -> params``; ``apply(params, ids, *, train=False, rng=None,
  rows=False) -> logits``; ``stages(batch, seq_len) -> [(name, shape), ...]`` describes what
  flows through it; ``embedder`` reads ``params["embed"]``."""

  init: Callable[..., Any]
  apply: Callable[..., jax.Array]
  stages: Callable[[int, int], list[tuple[str, tuple[int, ...]]]]
  embedder: Embedder | None = None
  # ``apply_gathered(params, vectors, ids, *, train=False, rng=None, segment_ids=None,
  # num_bags=None) -> logits``: ``apply`` on the table rows of ``ids`` already gathered
  # (``vectors [..., D]``; ``ids`` give the padding and the bags; ``params`` need no
  # ``embed["table"]``), so the gradient comes per occurrence; None where the model has none
  apply_gathered: Callable[..., jax.Array] | None = None


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


def stored_dtype(param_dtype: str, compute_dtype: str = "float32",
                 backend: str | None = None):
  """The embedding's stored dtype: ``param_dtype``, except that a ``bfloat16`` table is kept in
  ``float32`` on CPU unless ``compute_dtype`` is ``bfloat16`` too.

  XLA:CPU has no ``bfloat16`` scatter: every row update converts the whole table to ``float32``
  and back, so ``embedlab train experiments/sst2_bag.py --set model.param_dtype=bfloat16 --set
  train.num_epochs=1`` took a 96 s train loop against 6.6 s in ``float32`` on a 2-core CPU, and
  the conversion's ``float32`` copy means the smaller table saved no memory while training.
  GPUs and TPUs store ``bfloat16`` as asked.

  Example:
    >>> str(stored_dtype("bfloat16", "float32", backend="cpu"))
    'float32'
    >>> str(stored_dtype("bfloat16", "bfloat16", backend="cpu"))
    'bfloat16'
    >>> str(stored_dtype("bfloat16", "float32", backend="gpu"))
    'bfloat16'
  """
  dtype = jnp.dtype(param_dtype)
  if dtype != jnp.bfloat16 or jnp.dtype(compute_dtype) == jnp.bfloat16:
    return dtype
  backend = jax.default_backend() if backend is None else backend
  return jnp.dtype(jnp.float32) if backend == "cpu" else dtype


def make_embedder(num_embeddings: int, features: int, *, table: str = "plain",
                  table_options: dict[str, Any] | None = None, init: str = "normal",
                  init_scale: float = 0.1, max_norm: float = 0.0,
                  compute_dtype: str = "float32", param_dtype: str = "float32",
                  pretrained=None, oob: str = "error") -> Embedder:
  """The embedding for ids ``0..num_embeddings-1``: the table variant ``table`` of the registry
  ``embedlab.core.variants.TABLES`` with its factory's ``table_options`` (``{"rank": 2}`` for
  ``factorized``; ``Spec.fields`` maps them to config fields).

  ``param_dtype`` is the stored dtype (``bfloat16`` halves the table; on CPU only with
  ``compute_dtype="bfloat16"`` too, see ``stored_dtype``), ``compute_dtype`` the one vectors are
  computed in; ``init`` / ``init_scale`` (or a ``pretrained`` ``[V, D]`` array) start the table;
  ``max_norm`` renormalizes each row read; ``oob`` is the id policy of every read
  (``embedlab.lookup``).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> e = make_embedder(100, 8, table="factorized", table_options={"rank": 2})
    >>> embed = e.init(jax.random.key(0))
    >>> embed["table"].shape, e.bag(embed, jnp.array([[1, 2, 0]]), "mean").shape
    ((100, 2), (1, 8))
  """
  dtype, stored = jnp.dtype(compute_dtype), stored_dtype(param_dtype, compute_dtype)
  spec = variants.TABLES.spec(table)
  if pretrained is not None and not spec.pretrained:
    raise ValueError(f"model.pretrained needs model.table="
                     f"{variants.either(variants.TABLES.names_with('pretrained'), quote=True)}, "
                     f"not {table!r}.")
  variant = spec.module().make(num_embeddings, features, padding_id=PADDING_ID,
                               **(table_options or {}))
  read = dict(oob=oob, compute_dtype=dtype, max_norm=max_norm or None)

  def init_fn(key):
    embed = variant.init(key, init=pretrained if pretrained is not None else init,
                         scale=init_scale)
    return jax.tree.map(lambda x: x.astype(stored), embed)

  def lookup(embed, ids, *, rows=False):
    return variant.lookup(embed, ids, rows=rows, **read)

  def bag(embed, ids, mode, *, rows=False, segment_ids=None, num_bags=None):
    if segment_ids is not None and not variants.TABLES.pools_rows(table, mode, max_norm):
      raise ValueError(f"ragged bags (train.ragged_batches) need "
                       f"{variants.TABLES.ragged_requirements(table)}; --set "
                       "train.ragged_batches=false for this embedding.")
    return variant.bag(embed, ids, mode, rows=rows, segment_ids=segment_ids, num_bags=num_bags,
                       **read)

  rows = None if variant.rows is None else (lambda ids: variant.rows(ids, oob))
  return Embedder(init_fn, lookup, bag, rows, table, variant, features, dtype, max_norm,
                  num_embeddings)


def table_summary(embedder: Embedder, embed) -> contract.CompressedSummary:
  """The embedding's logical size, weights and bytes against a plain float32 table.

  Example:
    >>> import jax
    >>> e = make_embedder(100_000, 64, table="hashed",
    ...                   table_options={"num_buckets": 1000, "exact_size": 24})
    >>> embed = jax.eval_shape(e.init, jax.random.key(0))
    >>> print(table_summary(e, embed))  # doctest: +NORMALIZE_WHITESPACE
    hashed embedding: 100,000 ids x 64 features in 65,536 weights (256.0 KiB; a plain float32
    table: 24.4 MiB, 97.7x larger)
  """
  return embedder.variant.describe(embed)


def materialize(embedder: Embedder, embed, num_embeddings: int, *, chunk: int = 65536):
  """Every id's vector as one float32 ``numpy`` array ``[V, D]`` (for inspection and export):
  ``embed["table"]`` itself where it holds one row per id (the plain table), else each id
  looked up.

  Example:
    >>> import jax
    >>> e = make_embedder(10, 4, table="qr")
    >>> materialize(e, e.init(jax.random.key(0)), 10).shape
    (10, 4)
  """
  import numpy as np  # noqa: PLC0415
  if variants.TABLES.spec(embedder.kind).one_row_per_id:
    return np.asarray(embed["table"], np.float32)
  fn = jax.jit(lambda e, ids: embedder.lookup(e, ids).astype(jnp.float32))
  parts = []
  for start in range(0, num_embeddings, chunk):
    ids = np.arange(start, start + chunk, dtype=np.int32)
    parts.append(np.asarray(fn(embed, np.minimum(ids, num_embeddings - 1))))
  return np.concatenate(parts)[:num_embeddings]


def bag_model(embedder: Embedder, num_classes: int, *, pooling: str = "mean", hidden: int = 0,
              dropout: float = 0.0) -> Model:
  """fastText: the ``pooling`` (mean) of word (and hashed n-gram) embeddings, an optional
  ``hidden`` ReLU layer, ``dropout``, and a linear classifier (Joulin et al. 2017)."""
  features = embedder.features

  def init(key):
    k_embed, k_hidden, k_out = jax.random.split(key, 3)
    params = {"embed": embedder.init(k_embed)}
    width = features
    if hidden:
      params["hidden"] = _dense_init(k_hidden, width, hidden)
      width = hidden
    params["out"] = _dense_init(k_out, width, num_classes)
    return params

  def apply(params, ids, *, train=False, rng=None, rows=False, segment_ids=None, num_bags=None):
    # padded bags ids [B, L], or ragged ones: ids [T] with segment_ids [T] and num_bags
    x = embedder.bag(params["embed"], ids, pooling, rows=rows, segment_ids=segment_ids,
                     num_bags=num_bags)
    return head(params, x, train, rng)

  def apply_gathered(params, vectors, ids, *, train=False, rng=None, segment_ids=None,
                     num_bags=None):
    x = tables.pool_vectors(vectors.astype(embedder.dtype), ids != PADDING_ID,
                            pooling, segment_ids=segment_ids, num_bags=num_bags)
    # the table's rows are gathered: params may hold no "embed" (or only a projection)
    return head(params, embedder.variant.project(params.get("embed", {}), x), train, rng)

  def head(params, x, train, rng):
    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    if hidden:
      x = jax.nn.relu(_dense(params["hidden"], x))
    x = _dropout(x, dropout, train, keys[1])
    return _dense(params["out"], x).astype(jnp.float32)

  def stages(batch, seq_len):
    out = [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, features)),
           (f"pooled ({pooling})", (batch, features))]
    if hidden:
      out.append(("hidden", (batch, hidden)))
    return out + [("logits", (batch, num_classes))]

  # as embedder.bag pools: where it pools rows of the table (then projects), the train step
  # may gather the rows itself; max_norm and a factorized max read the table themselves
  gathered = (variants.TABLES.spec(embedder.kind).row_sparse
              and variants.TABLES.pools_rows(embedder.kind, pooling, embedder.max_norm))
  return Model(init, apply, stages, embedder, apply_gathered if gathered else None)


def cnn_model(embedder: Embedder, num_classes: int, *,
              filter_widths: tuple[int, ...] = (3, 4, 5), num_filters: int = 100,
              dropout: float = 0.0) -> Model:
  """Kim (2014): ``num_filters`` convolutions of each of ``filter_widths`` over the embeddings,
  max-over-time pooling, ``dropout``, and a linear classifier."""
  dtype, features = embedder.dtype, embedder.features
  widths = tuple(filter_widths)

  def init(key):
    keys = jax.random.split(key, len(widths) + 2)
    params = {"embed": embedder.init(keys[0])}
    for i, w in enumerate(widths):
      kernel = jax.nn.initializers.he_uniform(in_axis=(0, 1), out_axis=2)(
          keys[i + 1], (w, features, num_filters), jnp.float32)
      params[f"conv{w}"] = {"w": kernel, "b": jnp.zeros((num_filters,), jnp.float32)}
    params["out"] = _dense_init(keys[-1], num_filters * len(widths), num_classes)
    return params

  def apply(params, ids, *, train=False, rng=None, rows=False):
    _check_ids_rank(ids, "cnn_model.apply")
    x = embedder.lookup(params["embed"], ids, rows=rows)
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
    x = _dropout(x, dropout, train, rng)
    return _dense(params["out"], x).astype(jnp.float32)

  def stages(batch, seq_len):
    n = num_filters
    return [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, features))] + [
        (f"conv width {w} (relu)", (batch, seq_len, n)) for w in widths] + [
            ("max over time, concatenated", (batch, n * len(widths))),
            ("logits", (batch, num_classes))]

  return Model(init, apply, stages, embedder)


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


def bilstm_model(embedder: Embedder, num_classes: int, *, lstm_hidden: int = 128,
                 dropout: float = 0.0) -> Model:
  """A bidirectional LSTM (``lstm_hidden`` units each way) with attention pooling, ``dropout``
  and an MLP head (the flax SST-2 example)."""
  dtype, features, hidden = embedder.dtype, embedder.features, lstm_hidden

  def init(key):
    keys = jax.random.split(key, 6)
    return {"embed": embedder.init(keys[0]),
            "forward": _lstm_init(keys[1], features, hidden),
            "backward": _lstm_init(keys[2], features, hidden),
            "attention": {"proj": _dense_init(keys[3], 2 * hidden, hidden),
                          "v": jax.nn.initializers.normal(0.1)(keys[4], (hidden,))},
            "out": _dense_init(keys[5], 2 * hidden, num_classes)}

  def apply(params, ids, *, train=False, rng=None, rows=False):
    _check_ids_rank(ids, "bilstm_model.apply")
    x = embedder.lookup(params["embed"], ids, rows=rows)
    keys = jax.random.split(rng, 2) if rng is not None else (None, None)
    x = _dropout(x, dropout, train, keys[0])
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
    pooled = _dropout(pooled, dropout, train, keys[1])
    return _dense(params["out"], pooled).astype(jnp.float32)

  def stages(batch, seq_len):
    return [("ids", (batch, seq_len)), ("embeddings", (batch, seq_len, features)),
            ("bilstm states", (batch, seq_len, 2 * hidden)),
            ("attention-pooled", (batch, 2 * hidden)), ("logits", (batch, num_classes))]

  return Model(init, apply, stages, embedder)


def make_model(name: str, embedder: Embedder, num_classes: int, **options) -> Model:
  """The model ``name`` of ``registry.MODELS`` over ``embedder``, with its own ``options``
  (``registry.MODELS[name].fields``: ``pooling``, ``hidden``, ``dropout`` for ``bag``).

  Example:
    >>> m = make_model("cnn", make_embedder(50, 8), 2, filter_widths=(2, 3), num_filters=4)
    >>> m.stages(1, 6)[-2]
    ('max over time, concatenated', (1, 8))
  """
  spec = registry.MODELS.spec(name)
  unknown = sorted(set(options) - set(spec.fields))
  if unknown:
    raise TypeError(f"make_model: model {name!r} takes the options {', '.join(spec.fields)}, "
                    f"not {', '.join(unknown)}.")
  return spec.factory()(embedder, num_classes, **options)
