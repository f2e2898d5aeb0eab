"""Benchmark: SOP vs DINO vs iBOT on one shared pipeline (docs/design-notes.md, README "What sop-bench writes")."""
