"""What bit-exact resume rests on, CPU side (train/determinism.py); the CUDA side is measured
by test_cuda.py on a GPU. The CPU resume itself: test_train.test_resume_equals_uninterrupted_run.
"""
import os

import torch

from dovit_ros.train.determinism import (CUBLAS_CONFIG, configure_determinism,
                                         cuda_rng_to_restore)


def test_cpu_needs_nothing_switched_on(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    before = torch.are_deterministic_algorithms_enabled()
    assert configure_determinism('cpu') == {'deterministic': True, 'bit_exact_resume': True}
    # nothing global changes for a CPU run (train() runs inside test processes too)
    assert torch.are_deterministic_algorithms_enabled() == before
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ


def test_cuda_configuration_and_what_it_claims(monkeypatch):
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    calls = []
    monkeypatch.setattr(torch, 'use_deterministic_algorithms',
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', True)
    r = configure_determinism('cuda')
    assert calls == [(True, True)]   # warn_only: three training ops have no such kernel
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == CUBLAS_CONFIG == ':4096:8'
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert r['deterministic'] and not r['bit_exact_resume'] and len(r['nondeterministic_ops']) == 3
    monkeypatch.setenv('CUBLAS_WORKSPACE_CONFIG', ':16:8')   # a user's own setting is kept
    assert configure_determinism('cuda')['cublas_workspace_config'] == ':16:8'
    off = configure_determinism('cuda', enabled=False)
    assert off == {'deterministic': False, 'bit_exact_resume': False} and len(calls) == 2


def test_cuda_rng_states_restored_by_device():
    s = [torch.full((4,), i, dtype=torch.uint8) for i in range(3)]
    assert cuda_rng_to_restore(s, 3, 1) == dict(enumerate(s))       # same GPU count: all
    assert list(cuda_rng_to_restore(s, 1, 0)) == [0]                # fewer GPUs: the one used
    assert torch.equal(cuda_rng_to_restore(s, 8, 2)[2], s[2])
    assert cuda_rng_to_restore(s, 8, 5) == {}                       # never saved: left alone
    assert cuda_rng_to_restore([], 1, 0) == {}
