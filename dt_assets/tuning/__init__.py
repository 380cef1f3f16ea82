"""Hyper-parameter optimisation: the search space and the Optuna study.

Above both the models it trains and the validation it scores them by (model and validation import nothing from here).
"""
