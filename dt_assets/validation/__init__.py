"""Physics validation: observables, metrics, conditions grid, validate(), report and promotion rule."""
