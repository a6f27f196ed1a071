"""Flax modules that hold an embedlab table: drop-in replacements for ``nnx.Embed`` / ``nn.Embed``.

The modules only own the parameter; every computation is a call into ``embedlab.core.tables``, so a
Flax model gets the same id checks (out-of-range ids raise instead of becoming NaN), padding
(zero vectors, zero gradient to the padding row), ``max_norm`` and bag pooling as the functional
API. The parameter is named ``embedding`` as in Flax's own ``Embed``, so checkpoints and
``nnx.state`` paths carry over, and the functional API reads it as it is
(``el.lookup(params["embed"], ids)`` on ``{"embed": {"embedding": ...}}``); ``el.freeze`` takes
the path Flax gives it (``"embed/embedding"``). For row-sparse training of the table inside an
``nnx.Optimizer``, see ``embedlab.core.rowgrad`` (``value_and_row_grad`` on the model, and
``row_sparse`` for the table in an ``optax.multi_transform``); the README's "Use it from
Python" has the step.

  >>> import jax.numpy as jnp
  >>> from flax import nnx
  >>> from embedlab.models.flax_embed import Embed
  >>> layer = Embed(100, 8, padding_id=0, rngs=nnx.Rngs(0))
  >>> layer(jnp.array([[5, 0]])).shape
  (1, 2, 8)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from embedlab.core import ids as ids_lib
from embedlab.core import tables

Array = jax.Array
_UNSET = object()


def _unwrapped(init: Any, metadata: dict[str, Any], box_type: type) -> Any:
  """``init`` for ``init_table``: a callable whose result is a Flax metadata box (from
  ``nnx.with_partitioning`` / ``nn.with_partitioning``) gives its array, and the box lands in
  ``metadata["box"]`` (nnx: its metadata is merged into ``metadata``)."""
  if isinstance(init, (str, np.ndarray, jax.Array)) or not callable(init):
    return init

  def call(key, shape, dtype):
    value = init(key, shape, dtype)
    if isinstance(value, box_type):
      if box_type is nnx.VariableMetadata:
        metadata.update(value.metadata)
        return value.raw_value
      metadata["box"] = value
      return value.unbox()
    return value

  return call


class Embed(nnx.Module):
  """An ``nnx`` embedding layer backed by ``embedlab.core.tables`` (lookup, bag, attend).

  Takes ``nnx.Embed``'s arguments (``num_embeddings``, ``features``, ``dtype``,
  ``param_dtype``, ``embedding_init``, ``embedding_metadata``, ``rngs``) and adds embedlab's.

  Args:
    num_embeddings: rows, one per token id.
    features: numbers per row.
    rngs: ``nnx.Rngs``; the table is drawn from ``rngs.params()``.
    dtype: the dtype of the looked-up vectors (the computation dtype); default ``param_dtype``.
    param_dtype: the table's dtype.
    embedding_init: ``init_table``'s ``init``: a name (``normal``, ``uniform``,
      ``xavier_uniform``, ...), a callable ``init(key, shape, dtype)`` (a Flax initializer,
      also one wrapped by ``nnx.with_partitioning`` / ``nnx.with_metadata``, whose metadata the
      parameter then carries) or an array ``[num_embeddings, features]`` (pretrained vectors).
    padding_id: that row starts at zero; lookups of it give zero vectors and zero gradient.
    oob: out-of-range ids: ``"error"`` (raise; default), ``"clip"`` or ``"zero"``.
    scale: ``init_table``'s ``scale`` (stddev / half-width).
    max_norm: rows with a larger L2 norm are rescaled to it in the output (as PyTorch).
    sharding: the table's partitioning, e.g. ``("model", None)``: the parameter's
      ``out_sharding`` metadata, as ``nnx.with_partitioning`` sets it (``nnx.get_partition_spec``
      reads it). Flax places such a parameter on the current mesh when it is created (eager
      sharding): create the layer under ``jax.sharding.use_mesh`` or
      ``nnx.use_eager_sharding(False)``.
    embedding_metadata: more metadata for the ``nnx.Param``, as ``nnx.Embed``'s.
    init: deprecated name of ``embedding_init`` (a ``DeprecationWarning``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from embedlab.models.flax_embed import Embed
    >>> layer = Embed(4, 2, embedding_init=jnp.arange(8.0).reshape(4, 2), padding_id=0,
    ...               rngs=nnx.Rngs(0))
    >>> layer(jnp.array([0, 3]))
    Array([[0., 0.],
           [6., 7.]], dtype=float32)
    >>> with nnx.use_eager_sharding(False):
    ...   sharded = Embed(4, 2, sharding=("model", None), rngs=nnx.Rngs(0))
    >>> nnx.get_partition_spec(nnx.state(sharded))["embedding"].get_value()
    P('model', None)
  """

  def __init__(self, num_embeddings: int, features: int, *, rngs: nnx.Rngs,
               dtype: Any = None, param_dtype: Any = jnp.float32,
               embedding_init: Any = "normal", padding_id: int | None = None,
               oob: str = "error", scale: float | None = None, max_norm: float | None = None,
               sharding: Sequence[str | None] | None = None,
               embedding_metadata: Mapping[str, Any] = MappingProxyType({}),
               init: Any = _UNSET):
    if oob not in ids_lib.OOB_POLICIES:
      raise ValueError(f"Embed: oob={oob!r} is not one of {', '.join(ids_lib.OOB_POLICIES)}.")
    if init is not _UNSET:
      if not (isinstance(embedding_init, str) and embedding_init == "normal"):
        raise TypeError("Embed: pass the initializer as embedding_init only (init is its "
                        "deprecated name).")
      warnings.warn("Embed(init=...) is deprecated: use embedding_init=..., nnx.Embed's name.",
                    DeprecationWarning, stacklevel=5)  # the caller, past nnx's metaclass
      embedding_init = init
    metadata: dict[str, Any] = {}
    params = tables.init_table(rngs.params(), num_embeddings, features,
                               init=_unwrapped(embedding_init, metadata, nnx.VariableMetadata),
                               padding_id=padding_id, dtype=param_dtype, scale=scale)
    if sharding is not None:
      if "out_sharding" in metadata:
        raise TypeError("Embed: the table's partitioning is given twice, by sharding= and by "
                        "the initializer's nnx.with_partitioning; keep one.")
      metadata["out_sharding"] = tuple(sharding)
    self.embedding = nnx.Param(params["table"], **{**metadata, **embedding_metadata})
    self.num_embeddings = int(num_embeddings)
    self.features = int(features)
    self.padding_id = padding_id
    self.oob = oob
    self.dtype = param_dtype if dtype is None else dtype
    self.param_dtype = param_dtype
    self.max_norm = None if max_norm is None else tables.check_max_norm(max_norm, "Embed")

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
      >>> layer = Embed(4, 2, embedding_init=jnp.arange(8.0).reshape(4, 2), padding_id=0,
      ...               rngs=nnx.Rngs(0))
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
    embedding_init: ``init_table``'s ``init`` (a name, a callable or an array); a callable
      wrapped by ``nn.with_partitioning`` gives the parameter its partitioning box.
    scale: ``init_table``'s ``scale``.
    dtype: the dtype of the looked-up vectors; default ``param_dtype``.
    param_dtype: the table's dtype.
    max_norm: rows with a larger L2 norm are rescaled to it in the output.
    sharding: the table's logical partitioning, e.g. ``("vocab", None)``: the parameter is
      boxed in ``nn.Partitioned`` (``nn.get_partition_spec`` reads it).

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
  dtype: Any = None
  param_dtype: Any = jnp.float32
  max_norm: float | None = None
  sharding: Sequence[str | None] | None = None

  def setup(self):
    if self.oob not in ids_lib.OOB_POLICIES:
      raise ValueError(f"LinenEmbed: oob={self.oob!r} is not one of "
                       f"{', '.join(ids_lib.OOB_POLICIES)}.")
    if self.max_norm is not None:
      tables.check_max_norm(self.max_norm, "LinenEmbed")

    def init_fn(key):
      boxes: dict[str, Any] = {}
      table = tables.init_table(key, self.num_embeddings, self.features,
                                init=_unwrapped(self.embedding_init, boxes, nn.meta.AxisMetadata),
                                padding_id=self.padding_id, dtype=self.param_dtype,
                                scale=self.scale)["table"]
      if "box" in boxes:
        if self.sharding is not None:
          raise TypeError("LinenEmbed: the table's partitioning is given twice, by sharding= "
                          "and by the initializer's nn.with_partitioning; keep one.")
        return boxes["box"].replace_boxed(table)
      if self.sharding is not None:
        return nn.Partitioned(table, names=tuple(self.sharding))
      return table

    self.embedding = self.param("embedding", init_fn)

  @property
  def _compute_dtype(self):
    return self.param_dtype if self.dtype is None else self.dtype

  def __call__(self, ids: Any) -> Array:
    """Looks up ``ids`` (any rank) with ``embedlab.core.tables.lookup``: ``Array[*ids.shape, D]``."""
    return tables.lookup({"table": self.embedding}, ids, padding_id=self.padding_id,
                         oob=self.oob, max_norm=self.max_norm, compute_dtype=self._compute_dtype)

  def bag(self, ids: Any, *, mode: str = "mean", weights: Any = None, segment_ids: Any = None,
          num_bags: int | None = None) -> Array:
    """Pools each bag of ids into one vector with ``embedlab.core.tables.bag``: ``Array[B, D]``."""
    return tables.bag({"table": self.embedding}, ids, mode=mode, weights=weights,
                      padding_id=self.padding_id, segment_ids=segment_ids, num_bags=num_bags,
                      oob=self.oob, compute_dtype=self._compute_dtype)

  def attend(self, x: Array) -> Array:
    """Logits over the vocabulary, ``x @ table.T``: ``Array[..., num_embeddings]``."""
    return tables.attend({"table": self.embedding}, jnp.asarray(x, self._compute_dtype))
