"""Evaluations of a trained backbone.

kNN, linear probe, retrieval, corruptions, collapse, few-shot, fine-tuning, segmentation.
"""
