"""Pure rendering of an InferenceService into Kubernetes objects."""

from kinfer.render.render import render, to_yaml

__all__ = ["render", "to_yaml"]
