"""The component's entry point: componentize-py exports `Evaluator`."""

import scalewise
from capacity import INFO, decide

Evaluator = scalewise.evaluator(INFO, decide)
