import math

import torch

from hf_distil.losses import hidden_loss_rows, kd_loss_rows, mlm_loss_rows


def kd_loss_sum(s, t, T):
    return kd_loss_rows(s, t, T).sum()


def mlm_loss_sum(logits, labels):
    return mlm_loss_rows(logits, labels).sum()


def hidden_loss_sum(s, t, kind):
    return hidden_loss_rows(s, t, kind).sum()


def test_kd_equals_hand_computation_with_temperature_squared():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    for T in (1.0, 2.0, 4.0):
        total = 0.0
        for row in range(5):
            p = torch.softmax(t[row] / T, -1)
            q = torch.softmax(s[row] / T, -1)
            total += float((p * (p.log() - q.log())).sum())
        assert math.isclose(float(kd_loss_sum(s, t, T)), T * T * total, rel_tol=1e-5)
        # per-row mean == PyTorch KLDivLoss(batchmean) on the selected rows, times T²
        ref = torch.nn.KLDivLoss(reduction="batchmean")(torch.log_softmax(s / T, -1), torch.softmax(t / T, -1))
        assert torch.allclose(kd_loss_sum(s, t, T) / 5, ref * T * T, rtol=1e-5)


def test_kd_is_zero_for_identical_logits_and_runs_in_float32():
    x = torch.randn(3, 11).to(torch.bfloat16)
    assert kd_loss_rows(x, x, 2.0).shape == (3,)
    value = kd_loss_sum(x, x, 2.0)
    assert value.dtype == torch.float32 and abs(float(value)) < 1e-6


def test_mlm_sum_ignores_unlabelled_rows():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    labels = torch.tensor([0, 2, -100])
    expected = -math.log(math.e**2 / (math.e**2 + 2)) - math.log(1 / (math.e + 2))
    assert math.isclose(float(mlm_loss_sum(logits, labels)), expected, rel_tol=1e-6)


def test_hidden_cosine_and_mse():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    # 1 - cos: 1, 0, 2
    assert math.isclose(float(hidden_loss_sum(s, t, "cosine")), 3.0, rel_tol=1e-6)
    # squared errors per row: (1+1)/2, 0, (9+0)/2 → sum 5.5; / 3 rows = element-wise MSE over 6 elements
    assert math.isclose(float(hidden_loss_sum(s, t, "mse")), 5.5, rel_tol=1e-6)
    assert math.isclose(float(hidden_loss_sum(s, t, "mse")) / 3, float(torch.nn.functional.mse_loss(s, t)),
                        rel_tol=1e-6)


def test_every_term_gives_one_float32_value_per_row_as_documented():
    rows, vocab, width = 5, 11, 4
    s, t = torch.randn(rows, vocab).to(torch.bfloat16), torch.randn(rows, vocab).half()
    labels = torch.tensor([1, -100, 3, 0, -100])
    hs, ht = torch.randn(rows, width).to(torch.bfloat16), torch.randn(rows, width)
    for value in (kd_loss_rows(s, t, 2.0), mlm_loss_rows(s, labels), hidden_loss_rows(hs, ht, "cosine"),
                  hidden_loss_rows(hs, ht, "mse")):
        assert value.shape == (rows,) and value.dtype == torch.float32
    assert mlm_loss_rows(s, labels)[labels == -100].eq(0).all()


def test_losses_are_pure_tensor_functions():
    """losses.py imports nothing but torch (and math): no Trainer, no model, no other hf_distil module."""
    import ast

    import hf_distil.losses

    tree = ast.parse(open(hf_distil.losses.__file__, encoding="utf-8").read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= {"__future__", "math", "torch"}, imported
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
