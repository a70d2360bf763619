"""kinfer's development tools: the local test bed (`kinfer dev`) and the demo (`kinfer demo`).

A distribution of its own (devtools/pyproject.toml, kinfer-dev): the operator and runtime images
ship neither. Its commands reach `kinfer` through the `kinfer.commands` entry points.
"""
