"""Pigeon (WWW 2025, §2.2): backbone interface (backbone), tiny backbone (tiny), mask generator (mask),
personalization module (personalization), hybrid prompt (prompt), the model (model), two-stage training
(train) and the registered generators pigeon, lavit*, lavit, recon (generators). LaVIT lives in pigeon.lavit.
"""
