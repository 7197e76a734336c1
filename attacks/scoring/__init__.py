"""Scoring a model: the resumable pipeline, its report and plots, and the scorer's command."""
