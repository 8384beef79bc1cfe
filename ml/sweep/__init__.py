"""Sweeps over training settings: specs, frozen evaluation data, and one evaluation."""
