"""What the evaluators measure and report, apart from the trainer: the ICL claims (icl_claims,
probes, ood), video metrics, and the shared JSON, table and plot helpers (reporting)."""
