"""Predictions + truths -> metrics, sweep, report, comparison."""
