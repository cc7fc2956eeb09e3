"""relation: MiniLM v2's multi-head self-attention relation loss (Wang et al. 2021, eqs. 5-7): for Q-Q, K-K and
V-V, queries (keys, values) of all heads concatenated and split into A_r relation heads, the relation
softmax(x_a · x_aᵀ / √d_r), KL(teacher ‖ student) per token, averaged over relation heads and tokens; summed."""

import math

import torch
from reference import arguments, padded_mask, rows_of, term_value

from hf_distil.layer_map import LayerPlan
from hf_distil.signals import Signals


def minilm_v2_relation_loss(student_qkv, teacher_qkv, relation_heads):
    """The paper's formula on an unpadded batch, transcribed: the KL summed over the keys, divided by
    batch · A_r · |x| (KLDivLoss "batchmean" of the (batch · heads · tokens) rows), summed over the 3 relations."""
    total = 0.0
    for s, t in zip(student_qkv, teacher_qkv):
        def relation(x):
            b, n, w = x.shape
            d_r = w // relation_heads
            x = x.view(b, n, relation_heads, d_r).transpose(1, 2)
            return x @ x.transpose(-1, -2) / math.sqrt(d_r)

        s_log = torch.log_softmax(relation(s), -1).reshape(-1, s.shape[1])
        t_prob = torch.softmax(relation(t), -1).reshape(-1, t.shape[1])
        total = total + torch.nn.KLDivLoss(reduction="batchmean")(s_log, t_prob)
    return total


def test_relation_is_minilm_v2s_loss_with_different_widths_and_head_counts():
    torch.manual_seed(0)
    student = tuple(torch.randn(3, 6, 8) for _ in range(3))  # 8 wide
    teacher = tuple(torch.randn(3, 6, 12) * 2 for _ in range(3))  # 12 wide: 2 relation heads split both
    plan = LayerPlan((), {"relation": {"pair": (1, 3)}})
    rows = rows_of(torch.full((3, 6), -100), torch.ones(3, 6, dtype=torch.long))
    ours = term_value("relation", Signals(torch.zeros(1, 4), qkv={1: student}),
                      Signals(torch.zeros(1, 4), qkv={3: teacher}), rows, arguments(relation_heads=2), plan)
    theirs = minilm_v2_relation_loss(student, teacher, relation_heads=2)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_padded_keys_and_rows_are_left_out():
    torch.manual_seed(1)
    student = tuple(torch.randn(2, 5, 8) for _ in range(3))
    teacher = tuple(torch.randn(2, 5, 8) for _ in range(3))
    plan = LayerPlan((), {"relation": {"pair": (0, 0)}})
    lengths = [5, 3]
    rows = rows_of(torch.full((2, 5), -100), padded_mask(lengths, 5))
    ours = term_value("relation", Signals(torch.zeros(1, 4), qkv={0: student}),
                      Signals(torch.zeros(1, 4), qkv={0: teacher}), rows, arguments(relation_heads=2), plan)
    alone = [minilm_v2_relation_loss(tuple(x[b:b + 1, :n] for x in student), tuple(x[b:b + 1, :n] for x in teacher),
                                     2) for b, n in enumerate(lengths)]
    torch.testing.assert_close(ours, (alone[0] * 5 + alone[1] * 3) / 8, rtol=1e-6, atol=1e-7)
