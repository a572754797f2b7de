"""Adapters that let lmms-eval and VLMEvalKit drive a qwenvl pipeline. Neither package is a dependency:
the adapters are plain classes following their documented interfaces, and `register()` in each module
subclasses the real base class and registers it when the package is installed."""
