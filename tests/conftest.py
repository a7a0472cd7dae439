"""Shared test setup: the repo root on sys.path, single-threaded torch for stable, fast tests."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes, not seconds (torch.compile's first step); run by CI all the same")
