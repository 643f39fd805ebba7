"""Models: adapters, structures, plans, surgery, parameter accounting, loading and persistence."""
