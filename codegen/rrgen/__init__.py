"""rrgen: deploy compressed recursive reasoners (TRM) to microcontrollers.

Pipeline: model -> quantize -> trace -> plan -> emit -> build -> run.
"""

__version__ = "0.1.0"
