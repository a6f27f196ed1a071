"""Models over embedding tables: the text classifiers and the Flax modules.

``embedlab.models`` was once the classifiers' module; its names (``make_model``,
``make_embedder``, ...) still resolve here with a ``DeprecationWarning``. Import them from
``embedlab.models.classifiers``, where ``make_model`` and ``make_embedder`` take plain
arguments; ``embedlab.run.model_args`` builds them from an experiment's ``ModelConfig``.
"""

import importlib
import importlib.util


def __getattr__(name):
  """The classifiers' public names under their old module path, with a warning."""
  if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
    # a submodule not imported yet: ``from embedlab.models import registry`` imports it
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  classifiers = importlib.import_module("embedlab.models.classifiers")
  if name.startswith("_") or not hasattr(classifiers, name):
    raise AttributeError(f"module 'embedlab.models' has no attribute {name!r}")
  import warnings  # noqa: PLC0415
  warnings.warn(f"embedlab.models.{name} moved to embedlab.models.classifiers.{name}; import it "
                "from there (make_model and make_embedder take plain arguments; "
                "embedlab.run.model_args builds them from a ModelConfig).", DeprecationWarning,
                stacklevel=2)
  return getattr(classifiers, name)
