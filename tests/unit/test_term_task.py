"""task: a classifier's own cross-entropy on its gold labels (Hinton et al.'s hard-label term), per labelled token
or per example; unset, its weight is 1."""

import torch
from reference import arguments, rows_of, term_value

from hf_distil.signals import Signals
from hf_distil.terms import by_name, weight_of


def test_task_is_the_mean_cross_entropy_of_the_labelled_examples():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    labels = torch.tensor([2, 0, -100, 1])  # a sequence classifier: one label per example, one unlabelled
    rows = rows_of(labels, torch.ones(4, 5, dtype=torch.long), selected="M")
    ours = term_value("task", Signals(logits[rows.positions // 5]), None, rows, arguments())
    theirs = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_an_unset_task_weight_is_one():
    assert weight_of(arguments(alpha_task=None), "task") == 1.0 == by_name("task").default_weight
    assert weight_of(arguments(alpha_task=0.0), "task") == 0.0
