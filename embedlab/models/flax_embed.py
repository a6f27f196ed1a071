"""Flax modules that hold an embedlab table: drop-in replacements for ``nnx.Embed`` / ``nn.Embed``.

The modules only own the parameter; every computation is a call into ``embedlab.core.tables``, so a
Flax model gets the same id checks (out-of-range ids raise instead of becoming NaN), padding
(zero vectors, zero gradient to the padding row), ``max_norm`` and bag pooling as the functional
API. The parameter is named ``embedding`` as in Flax's own ``Embed``, so checkpoints and
``nnx.state`` paths carry over.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from embedlab.models.flax_embed import Embed
  >>> layer = Embed(100, 8, padding_id=0, rngs=nnx.Rngs(0))
  >>> layer(jnp.array([[5, 0]])).shape
  (1, 2, 8)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from embedlab.core import ids as ids_lib
from embedlab.core import tables

Array = jax.Array


class Embed(nnx.Module):
  """An ``nnx`` embedding layer backed by ``embedlab.core.tables`` (lookup, bag, attend).

  Args:
    num_embeddings: rows, one per token id.
    features: numbers per row.
    rngs: ``nnx.Rngs``; the table is drawn from ``rngs.params()``.
    padding_id: that row starts at zero; lookups of it give zero vectors and zero gradient.
    oob: out-of-range ids: ``"error"`` (raise; default), ``"clip"`` or ``"zero"``.
    init: ``init_table``'s ``init``: a name (``normal``, ``uniform``, ``xavier_uniform``, ...), a
      callable ``init(key, shape, dtype)`` or an array ``[num_embeddings, features]``
      (pretrained vectors, e.g. from ``embedlab.data.vectors.load_vectors``).
    scale: ``init_table``'s ``scale`` (stddev / half-width).
    dtype: the dtype of the looked-up vectors (the computation dtype).
    param_dtype: the table's dtype.
    max_norm: rows with a larger L2 norm are rescaled to it in the output (as PyTorch).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from embedlab.models.flax_embed import Embed
    >>> layer = Embed(4, 2, init=jnp.arange(8.0).reshape(4, 2), padding_id=0, rngs=nnx.Rngs(0))
    >>> layer(jnp.array([0, 3]))
    Array([[0., 0.],
           [6., 7.]], dtype=float32)
  """

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
               padding_id: int | None = None, oob: str = "error", init: Any = "normal",
               scale: float | None = None, dtype: Any = jnp.float32,
               param_dtype: Any = jnp.float32, max_norm: float | None = None):
    if oob not in ids_lib.OOB_POLICIES:
      raise ValueError(f"Embed: oob={oob!r} is not one of {', '.join(ids_lib.OOB_POLICIES)}.")
    params = tables.init_table(rngs.params(), num_embeddings, features, init=init,
                               padding_id=padding_id, dtype=param_dtype, scale=scale)
    self.embedding = nnx.Param(params["table"])
    self.num_embeddings = int(num_embeddings)
    self.features = int(features)
    self.padding_id = padding_id
    self.oob = oob
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.max_norm = max_norm

  @property
  def params(self) -> tables.Params:
    """The table as embedlab params, ``{"table": Array[num_embeddings, features]}``.

    Example:
      >>> from flax import nnx
      >>> from embedlab.models.flax_embed import Embed
      >>> Embed(10, 3, rngs=nnx.Rngs(0)).params["table"].shape
      (10, 3)
    """
    return {"table": self.embedding[...]}

  def __call__(self, ids: Any) -> Array:
    """Looks up ``ids`` (any rank) with ``embedlab.core.tables.lookup``: ``Array[*ids.shape, D]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from embedlab.models.flax_embed import Embed
      >>> Embed(10, 3, rngs=nnx.Rngs(0))(jnp.array([[1, 12]]))
      Traceback (most recent call last):
      ...
      ValueError: lookup: id 12 at position (0, 1) is outside the table (10 rows: ...
    """
    return tables.lookup(self.params, ids, padding_id=self.padding_id, oob=self.oob,
                         max_norm=self.max_norm, compute_dtype=self.dtype)

  def bag(self, ids: Any, *, mode: str = "mean", weights: Any = None, segment_ids: Any = None,
          num_bags: int | None = None) -> Array:
    """Pools each bag of ids into one vector with ``embedlab.core.tables.bag``: ``Array[B, D]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from embedlab.models.flax_embed import Embed
      >>> layer = Embed(4, 2, init=jnp.arange(8.0).reshape(4, 2), padding_id=0, rngs=nnx.Rngs(0))
      >>> layer.bag(jnp.array([[1, 3, 0]]), mode="mean")
      Array([[4., 5.]], dtype=float32)
    """
    return tables.bag(self.params, ids, mode=mode, weights=weights, padding_id=self.padding_id,
                      segment_ids=segment_ids, num_bags=num_bags, oob=self.oob,
                      compute_dtype=self.dtype)

  def attend(self, x: Array) -> Array:
    """Logits over the vocabulary, ``x @ table.T`` (tied output embedding): ``Array[..., V]``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from embedlab.models.flax_embed import Embed
      >>> Embed(100, 8, rngs=nnx.Rngs(0)).attend(jnp.ones((2, 8))).shape
      (2, 100)
    """
    return tables.attend(self.params, jnp.asarray(x, self.dtype))


class LinenEmbed(nn.Module):
  """A ``flax.linen`` embedding layer backed by ``embedlab.core.tables``; parameter ``"embedding"``.

  The same behaviour as ``Embed``; the parameter has ``nn.Embed``'s name and shape, so
  ``nn.Embed`` variables load as they are. The initializer field is ``embedding_init`` (as in
  ``nn.Embed``: ``init`` is taken by ``Module.init``).

  Attributes:
    num_embeddings: rows, one per token id.
    features: numbers per row.
    padding_id: the zero row; its lookups give zero vectors and zero gradient.
    oob: ``"error"`` (default), ``"clip"`` or ``"zero"``, as ``embedlab.core.tables.lookup``.
    embedding_init: ``init_table``'s ``init`` (a name, a callable or an array).
    scale: ``init_table``'s ``scale``.
    dtype: the dtype of the looked-up vectors.
    param_dtype: the table's dtype.
    max_norm: rows with a larger L2 norm are rescaled to it in the output.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from embedlab.models.flax_embed import LinenEmbed
    >>> layer = LinenEmbed(100, 8, padding_id=0)
    >>> variables = layer.init(jax.random.key(0), jnp.zeros((2, 5), "int32"))
    >>> variables["params"]["embedding"].shape
    (100, 8)
    >>> layer.apply(variables, jnp.array([[0, 7]])).shape
    (1, 2, 8)
  """

  num_embeddings: int
  features: int
  padding_id: int | None = None
  oob: str = "error"
  embedding_init: Any = "normal"
  scale: float | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  max_norm: float | None = None

  def setup(self):
    if self.oob not in ids_lib.OOB_POLICIES:
      raise ValueError(f"LinenEmbed: oob={self.oob!r} is not one of "
                       f"{', '.join(ids_lib.OOB_POLICIES)}.")

    def init_fn(key):
      return tables.init_table(key, self.num_embeddings, self.features,
                               init=self.embedding_init, padding_id=self.padding_id,
                               dtype=self.param_dtype, scale=self.scale)["table"]

    self.embedding = self.param("embedding", init_fn)

  def __call__(self, ids: Any) -> Array:
    """Looks up ``ids`` (any rank) with ``embedlab.core.tables.lookup``: ``Array[*ids.shape, D]``."""
    return tables.lookup({"table": self.embedding}, ids, padding_id=self.padding_id,
                         oob=self.oob, max_norm=self.max_norm, compute_dtype=self.dtype)

  def bag(self, ids: Any, *, mode: str = "mean", weights: Any = None, segment_ids: Any = None,
          num_bags: int | None = None) -> Array:
    """Pools each bag of ids into one vector with ``embedlab.core.tables.bag``: ``Array[B, D]``."""
    return tables.bag({"table": self.embedding}, ids, mode=mode, weights=weights,
                      padding_id=self.padding_id, segment_ids=segment_ids, num_bags=num_bags,
                      oob=self.oob, compute_dtype=self.dtype)

  def attend(self, x: Array) -> Array:
    """Logits over the vocabulary, ``x @ table.T``: ``Array[..., num_embeddings]``."""
    return tables.attend({"table": self.embedding}, jnp.asarray(x, self.dtype))
