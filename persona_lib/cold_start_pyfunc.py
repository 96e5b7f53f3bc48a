"""The cold-start pyfunc, logged as MLflow "models from code": MLflow logs this file and runs
it to build the model when it loads it, instead of unpickling a Python object. The package
travels with the model (``code_paths``), so the import below works where persona_lib is not
installed. Not imported by the package itself."""

from mlflow.models import set_model

from persona_lib.cold_start import ColdStartPersonaModel

set_model(ColdStartPersonaModel())
