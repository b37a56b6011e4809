"""MLflow "model from code" entry: `mlflow` runs this file when it loads a logged gramian model."""

import warnings

import mlflow

from gramian.pyfunc import FoldInModel

with warnings.catch_warnings():  # MLflow asks for predict type hints, then would read them as a schema
    warnings.simplefilter("ignore", UserWarning)
    mlflow.models.set_model(FoldInModel())
