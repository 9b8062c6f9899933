import copy

import torch

from core.common.stopping import StopFlag, StopOnFlag


def test_each_session_copy_is_an_independent_flag():
    template = StopFlag()
    alice, bob = copy.deepcopy(template), copy.deepcopy(template)
    alice.stop()
    assert alice.stopped and not bob.stopped and not template.stopped


def test_stopping_criteria_follows_the_flag():
    flag = StopFlag()
    criteria = StopOnFlag(flag)
    ids = torch.zeros((2, 3), dtype=torch.long)
    assert not criteria(ids, None).any()
    flag.stop()
    assert criteria(ids, None).all()
