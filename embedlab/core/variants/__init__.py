"""The table variants: one registry, ``TABLES``, the only list of their names and what they support.

A variant is a factory shaped like an optax transformation: ``make(num_embeddings, features, *,
padding_id=None, **options)`` returns a ``contract.TableVariant``, a NamedTuple of pure
functions (``init``, ``lookup``, ``bag``, ``rows``, ``project``, ``describe``) over a plain
params pytree. Each variant is one module of this package named like its registry entry:

==================  ===========================================  ==============================
``model.table``     params                                       options (config field)
==================  ===========================================  ==============================
plain               ``{"table": [V, D]}``
hashed              ``{"table": [exact_size + num_buckets, D]}``  ``num_buckets``
                                                                 (``table_buckets``),
                                                                 ``exact_size`` (``table_exact``)
hash_embedding      ``{"pool": [B, D], "importance": [V, k]}``    ``pool_size`` (``table_buckets``),
                                                                 ``num_hashes`` (``table_hashes``)
qr                  ``{"quotient": [ceil(V/m), D1],``             ``num_collisions``
                    `` "remainder": [m, D2]}``                    (``table_collisions``),
                                                                 ``combine`` (``table_combine``)
factorized          ``{"table": [V, r], "projection": [r, D]}``   ``rank`` (``table_rank``)
==================  ===========================================  ==============================

This module is read without JAX (``embedlab.config`` validates a config before JAX loads): the
``Spec`` of each entry holds the names, options and capabilities; ``get(name)`` imports the
variant's module, and with it JAX, on first use. Quantized storage is a transformation over any
variant's trained params (``embedlab.core.quantize``), not an entry here.

Adding a variant: write ``embedlab/core/variants/<name>.py`` with ``make`` and ``describe`` (see
``plain.py``; ``contract.row_table`` and ``contract.shared_table`` build most of it) and add its
``Spec`` to ``TABLES`` below. Config choices, validation, the models, the train step, summaries
and the contract tests (``tests/test_variants.py``) then cover it. ``TABLES.register(spec)``
returns a new registry with one more entry (nothing global changes), for a variant defined
elsewhere, e.g. in a test.

  >>> from embedlab.core import variants
  >>> variants.TABLES.names
  ('plain', 'hashed', 'hash_embedding', 'qr', 'factorized')
  >>> variants.TABLES.names_with("row_sparse")
  ('plain', 'hashed', 'factorized')
  >>> import jax, jax.numpy as jnp
  >>> qr = variants.get("qr")(1000, 16, padding_id=0, num_collisions=32)
  >>> qr.lookup(qr.init(jax.random.key(0)), jnp.array([[3, 999]])).shape
  (1, 2, 16)
"""

from __future__ import annotations

import importlib
import typing
from typing import Any, Callable, Iterator, Literal, Mapping, NamedTuple

BAG_MODES = ("sum", "mean", "max", "sqrtn")  # embedlab.core.tables.BAG_MODES, without JAX


class Spec(NamedTuple):
  """One registry entry: a variant's name, options and capabilities, readable without JAX.

  Attributes:
    name: the ``model.table`` value and the module ``embedlab.core.variants.<name>``.
    title: the kind ``describe`` reports (``"quotient-remainder"`` for ``qr``).
    entries: the params' entries (``("table",)``), how ``describe_compressed`` recognises them.
    fields: ``{config field of model: factory option}``, e.g. ``{"table_rank": "rank"}``.
    required: ``{config field: a typical value}`` for fields that must be > 0.
    choices: ``{config field: allowed values}`` for string options.
    row_sparse: ``params["table"]`` has a row per id or per hashed id, which row-sparse
      optimizers update by rows (``rows`` maps ids to them); shared-weight variants have none.
    sharding: ``params["table"]`` is split by rows over a mesh's ``model`` axis.
    pooled_modes: the bag modes in which ``bag`` pools rows of ``params["table"]`` and then
      applies ``project`` (linear): those pool ragged bags, and the row-sparse step may pool
      the gathered rows itself.
    pretrained: starts from pretrained vectors (one row per word).
    max_norm: renormalizes each looked-up row (``embedlab.lookup``'s ``max_norm``).
    one_row_per_id: ``params["table"][i]`` is id ``i``'s vector (read directly by inspection).
    example: small options for doctests and contract tests.
    check: ``check({model config field: value}) -> error or None``, for rules between fields.
    load: returns the variant's module (``make``, ``describe``); default: import
      ``embedlab.core.variants.<name>``.
  """

  name: str
  title: str
  entries: tuple[str, ...]
  fields: Mapping[str, str] = {}
  required: Mapping[str, int] = {}
  choices: Mapping[str, tuple[str, ...]] = {}
  row_sparse: bool = False
  sharding: bool = False
  pooled_modes: tuple[str, ...] = ()
  pretrained: bool = False
  max_norm: bool = False
  one_row_per_id: bool = False
  example: Mapping[str, Any] = {}
  check: Callable[[Mapping[str, Any]], str | None] | None = None
  load: Callable[[], Any] | None = None

  def module(self) -> Any:
    """The variant's module (imports JAX)."""
    if self.load is not None:
      return self.load()
    return importlib.import_module(f"{__name__}.{self.name}")

  def options(self, values: Mapping[str, Any]) -> dict[str, Any]:
    """The factory's options from config values: ``{option: values[field]}``."""
    return {option: values[field] for field, option in self.fields.items()}


def _check_qr(values: Mapping[str, Any]) -> str | None:
  if values["table_combine"] == "concat" and values["features"] < 2:
    return ("model.table_combine = 'concat' splits model.features between the two tables and "
            "needs model.features >= 2.")
  return None


class Registry(Mapping[str, Spec]):
  """An immutable ``{name: Spec}`` in a fixed order; ``register`` returns a new one."""

  def __init__(self, specs: tuple[Spec, ...]):
    self._specs = {s.name: s for s in specs}
    if len(self._specs) != len(specs):
      raise ValueError(f"Registry: duplicate names in {[s.name for s in specs]}.")

  def __getitem__(self, name: str) -> Spec:
    return self._specs[name]

  def spec(self, name: str) -> Spec:
    """The entry of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in self._specs:
      raise ValueError(f"model.table={name!r} is not one of {', '.join(self._specs)}.")
    return self._specs[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._specs)

  def __len__(self) -> int:
    return len(self._specs)

  def __contains__(self, name: object) -> bool:
    return name in self._specs

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self._specs)

  def names_with(self, capability: str) -> tuple[str, ...]:
    """The names whose ``Spec`` has ``capability`` (``"row_sparse"``, ``"pretrained"``, ...)."""
    return tuple(n for n, s in self._specs.items() if getattr(s, capability))

  def register(self, spec: Spec) -> Registry:
    """A new registry with ``spec`` added (or replacing the entry of the same name)."""
    return Registry(tuple({**self._specs, spec.name: spec}.values()))

  def factory(self, name: str) -> Callable[..., Any]:
    """The factory ``make(num_embeddings, features, *, padding_id=None, **options)`` of
    ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    return self.spec(name).module().make

  def pools_rows(self, name: str, mode: str, max_norm: float | None = None) -> bool:
    """Whether ``bag(mode)`` pools gathered rows of ``params["table"]`` (then ``project``):
    what ragged bags and the row-sparse step's own gather-and-pool need. ``max_norm``
    renormalizes each row read, so those bags pool the looked-up vectors instead."""
    return mode in self.spec(name).pooled_modes and not max_norm

  def ragged_requirements(self, table: str | None = None) -> str:
    """The settings that pool ragged bags, in words (for error messages); ``table`` is named
    as the one that does not.

    Example:
      >>> TABLES.ragged_requirements("qr")
      "model.table = plain, hashed or factorized (not 'qr'), model.max_norm = 0 and, factorized, a pooling other than max"
    """
    names = [n for n, s in self._specs.items() if s.pooled_modes]
    notes = [f" and, {n}, a pooling other than {either([m for m in BAG_MODES if m not in s])}"
             for n, s in ((n, self._specs[n].pooled_modes) for n in names)
             if set(s) != set(BAG_MODES)]
    rejected = "" if table is None else f" (not {table!r})"
    return f"model.table = {either(names)}{rejected}, model.max_norm = 0" + "".join(notes)


def either(names: tuple[str, ...] | list[str], quote: bool = False) -> str:
  """``"a, b or c"`` (``"'a'"`` with ``quote``), for error messages.

  Example:
    >>> either(("plain", "hashed", "factorized"))
    'plain, hashed or factorized'
  """
  shown = [repr(n) if quote else n for n in names]
  return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


TABLES = Registry((
    Spec("plain", "plain", ("table",), row_sparse=True, sharding=True, pooled_modes=BAG_MODES,
         pretrained=True, max_norm=True, one_row_per_id=True),
    Spec("hashed", "hashed", ("table",),
         fields={"table_buckets": "num_buckets", "table_exact": "exact_size"},
         required={"table_buckets": 262144}, row_sparse=True, sharding=True,
         pooled_modes=BAG_MODES, example={"num_buckets": 13, "exact_size": 10}),
    Spec("hash_embedding", "hash", ("pool", "importance"),
         fields={"table_buckets": "pool_size", "table_hashes": "num_hashes"},
         required={"table_buckets": 65536}, example={"pool_size": 7, "num_hashes": 3}),
    Spec("qr", "quotient-remainder", ("quotient", "remainder"),
         fields={"table_collisions": "num_collisions", "table_combine": "combine"},
         choices={"table_combine": ("mult", "add", "concat")},
         example={"num_collisions": 6, "combine": "mult"}, check=_check_qr),
    Spec("factorized", "factorized", ("table", "projection"), fields={"table_rank": "rank"},
         required={"table_rank": 8}, row_sparse=True, sharding=True,
         pooled_modes=("sum", "mean", "sqrtn"), example={"rank": 3}),
))

TableName = Literal["plain", "hashed", "hash_embedding", "qr", "factorized"]
# the Literal type is written out for type checkers; it must name the registry's entries
assert typing.get_args(TableName) == TABLES.names, (typing.get_args(TableName), TABLES.names)


def get(name: str) -> Callable[..., Any]:
  """``TABLES.factory(name)``: the factory of a variant of the registry.

  Example:
    >>> import jax
    >>> from embedlab.core import variants
    >>> v = variants.get("factorized")(100, 32, padding_id=0, rank=4)
    >>> v.init(jax.random.key(0))["projection"].shape
    (4, 32)
  """
  return TABLES.factory(name)


def describe_compressed(params: Any, *, num_embeddings: int | None = None,
                        combine: str = "mult") -> Any:
  """Which variant (or quantized storage) ``params`` hold, their logical size, weights and
  bytes: a ``contract.CompressedSummary``, recognised by the params' entries (``Spec.entries``).

  Args:
    params: any variant's params, or ``embedlab.core.quantize.quantize()``'s output.
    num_embeddings: the logical vocabulary where the params do not fix it (the hashing trick:
      default its rows; quotient-remainder: default ``Q * m``).
    combine: for quotient-remainder params.

  Example:
    >>> import jax
    >>> from embedlab.core import variants
    >>> from embedlab.core.variants import factorized
    >>> p = factorized.init_factorized_table(jax.random.key(0), 2_000_000, 64, rank=16)
    >>> print(variants.describe_compressed(p))  # doctest: +NORMALIZE_WHITESPACE
    factorized embedding: 2,000,000 ids x 64 features in 32,001,024 weights (122.1 MiB;
    a plain float32 table: 488.3 MiB, 4.0x larger)
  """
  from embedlab.core import quantize  # noqa: PLC0415 - JAX loads here, not with the registry
  from embedlab.core.variants import contract  # noqa: PLC0415
  if quantize.is_quantized(params):
    kind, rows, features = quantize.describe_quantized(params)
    return contract.summarize(kind, num_embeddings or rows, features, params)
  keys = set(params) if isinstance(params, dict) else set()
  for spec in TABLES.values():
    if keys == set(spec.entries):
      return spec.module().describe(params, num_embeddings=num_embeddings, combine=combine)
  raise TypeError(f"describe_compressed: unknown params with entries {sorted(keys)}; expected "
                  f"those of a variant ({', '.join(TABLES.names)}: "
                  f"{'; '.join(str(list(s.entries)) for s in TABLES.values())}) or quantize()'s.")
