"""Trained model files (JSON) for the linear guardrail classifiers; see hack/train_guardrails.py.

A package only so that the wheel ships its *.json files (package data).
"""
