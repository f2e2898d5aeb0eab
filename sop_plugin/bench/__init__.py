"""Benchmark: SOP vs DINO vs iBOT on one shared pipeline.

See docs/design-notes.md and README "What sop-bench writes".
"""
