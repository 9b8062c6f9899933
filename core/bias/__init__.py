"""Bias probes: counterfactual templates, paired sentences, generations, fairness metrics, and their report."""
