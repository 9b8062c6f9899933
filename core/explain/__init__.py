"""Explain: attention maps and SHAP attributions, with the methods found through a registry by task."""
