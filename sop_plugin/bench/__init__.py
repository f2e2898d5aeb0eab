"""Benchmark: SOP vs DINO vs iBOT on one shared pipeline (see DESIGN.md section 3)."""
