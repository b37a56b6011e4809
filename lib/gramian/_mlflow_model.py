"""MLflow "model from code" entry: `mlflow` runs this file when it loads a logged gramian model."""

import mlflow

from gramian.pyfunc import FoldInModel

mlflow.models.set_model(FoldInModel())
