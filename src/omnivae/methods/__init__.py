"""Methods whose model or objective goes beyond one aggregated posterior (e.g. MM-VAMP)."""
